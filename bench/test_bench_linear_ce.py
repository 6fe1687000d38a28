"""Fused linear cross-entropy vs eager cross-entropy on full logits vs Liger's
LigerFusedLinearCrossEntropyLoss (the loss of CPT, Align and SFT).

Time of one step (mode ``full``: forward + backward; ``no_grad``: forward only) with
pytest-benchmark, and peak memory of one step in a fresh subprocess, as
``bench/test_bench_grpo_loss.py`` measures them (CPU: peak RSS after a warm-up step on
tiny inputs; CUDA: max allocated). Per case in ``extra_info``:

- ``peak_extra_mib``: peak minus the memory with the inputs allocated;
- ``workspace_mib``: ``peak_extra_mib`` minus ``grads_mib``, the gradients every
  implementation must return (dL/dW + dL/dhidden, float32: 687 MiB at V = 167,680,
  H = 1,024, 8,192 tokens).

The headline case ``v168k-h1024-t8192`` is the 8B recipe's extended vocabulary
(167,680 rows = Qwen's 151,936 + the Tibetan extension, padded to 128) at H = 1,024 and
8,192 labelled tokens; it is marked ``slow`` (eager needs ~22 GB and a minute per step on
CPU) so the CI bench smoke run stays fast:

    pytest bench/test_bench_linear_ce.py --benchmark-only -m "" -k "full"
    python -m ftib.bench.ratios .benchmarks/.../*.json     # time and memory ratios

Config of every case: float32, no bias, every token labelled, reduction ``mean``, hidden
and lm_head both trainable. Liger's kernels are Triton on CUDA only: its cases skip on
CPU (and where liger-kernel does not import).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ftib.bench._loss_bench import LossBench, can_import, loss_step
from ftib.kernels.linear_ce import fused_linear_cross_entropy
from ftib.kernels.reference import linear_ce as ref

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FUSED = "triton" if DEVICE.type == "cuda" else "torch"
# name -> (V, H, tokens)
SIZES = {
    "v32k-h512-t1024": (32768, 512, 1024),
    "v168k-h1024-t2048": (167680, 1024, 2048),
    "v168k-h1024-t8192": (167680, 1024, 8192),
}
SLOW = {"v168k-h1024-t2048", "v168k-h1024-t8192"}
ROUNDS = {"v32k-h512-t1024": 5}
IMPLS = ["fused", "eager", "liger"]


def make_inputs(size: str | tuple[int, int, int], dtype=torch.float32):
    V, H, tokens = SIZES[size] if isinstance(size, str) else size
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, H, generator=g).to(dtype).to(DEVICE).requires_grad_()
    weight = (torch.randn(V, H, generator=g) * H**-0.5).to(dtype).to(DEVICE).requires_grad_()
    labels = torch.randint(0, V, (tokens,), generator=g).to(DEVICE)
    return dict(hidden=hidden, weight=weight, labels=labels)


def make_step(impl: str, x: dict, mode: str):
    """A zero-argument callable running one step; returns the loss."""
    h, w, y = x["hidden"], x["weight"], x["labels"]
    if impl == "fused":
        def loss_fn():
            return fused_linear_cross_entropy(h, w, y, impl=FUSED).loss
    elif impl == "eager":
        def loss_fn():
            return ref.linear_cross_entropy(h, w, y)[0]
    else:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

        module = LigerFusedLinearCrossEntropyLoss(reduction="mean")

        def loss_fn():
            return module(w, h, y)

    return loss_step(loss_fn, (h, w), mode, DEVICE)


BENCH = LossBench(script=Path(__file__), sizes=SIZES, slow=frozenset(SLOW), rounds=ROUNDS,
                  make_inputs=make_inputs, make_step=make_step, device=DEVICE, fused_impl=FUSED)


@BENCH.cases(IMPLS)
def test_linear_ce(benchmark, impl, mode, size):
    # The implementations agree on the first size before they are timed.
    BENCH.run_case(benchmark, impl=impl, mode=mode, size=size,
                   config={"reduction": "mean", "z_loss_weight": 0.0, "bias": False},
                   # Liger's fused linear CE is Triton on CUDA only.
                   liger_ok=DEVICE.type == "cuda" and can_import(
                       "liger_kernel.transformers.fused_linear_cross_entropy", "LigerFusedLinearCrossEntropyLoss"),
                   liger_reason="Liger's fused linear CE needs CUDA and an importable liger-kernel")


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--measure-memory":
    print(json.dumps(BENCH.measure_here(json.loads(sys.argv[2]))))
