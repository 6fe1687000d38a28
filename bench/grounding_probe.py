"""Can this checkpoint still learn to look at its images? A learnability probe.

The probe trains a copy of a VLM for a few hundred steps on the simplest grounded
question there is: one circle, red or blue, in one of the nine cells of an otherwise
empty FTibWorld-coloured 64 x 64 image; "is there something red in the picture?" (in
Chinese), answered 是。/ 不是。 Nothing but the circle's colour decides the answer, so
the answer loss with each record's own image versus the next record's image
(:func:`ftib.stages.common.image_grounding`, the "grounding gap", nats per answer token)
measures how much of the image the model learnt to use. 0 means it still answers from
the text alone.

Why it exists (issue 17): ``ftibworld-base`` reached chance on every image benchmark and
a grounding gap of 0.000. The probe separates the image pipeline from the learning
problem:

- a fresh random initialisation (``ftibworld-base-init``, ``tiny-qwen3-vl``) learns the
  probe within 200 steps (gap ~0.6-0.9 nats), so pixels, patches, the merger and the
  image tokens reach the answer;
- the same architecture after ``configs/ftibworld-base.yaml``'s text-only CPT stage
  does not (gap 0.000 after 200 steps), although it learns a whole-image colour at once:
  text-only pretraining leaves the language model unable to pick one image token out of
  nine.

Usage::

    python -m ftib.bench.grounding_probe ftibworld-base-init --steps 200
    python -m ftib.bench.grounding_probe runs/ftibworld-base/stages/text/final

CPU, float32, one thread is enough (~1 min for 200 steps).
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from typing import Any

import torch

BACKGROUND = (245, 242, 235)  # FTibWorld's paper colour
QUESTION = "图中有红色的东西吗？"


@dataclass(frozen=True, kw_only=True)
class ProbePoint:
    """One evaluation of the probe: training step, last batch loss, grounding gap and
    the held-out answer loss with the records' own images (nats per answer token)."""

    step: int
    loss: float
    gap: float
    matched: float


def probe_records(n: int, rng: random.Random, radius: int = 9, size: int = 64
                  ) -> list[tuple[list[dict], list[Any], str]]:
    """``n`` chat records of the probe: (messages, [image], id)."""
    from PIL import Image, ImageDraw

    cell = size / 3
    out = []
    for i in range(n):
        colour = rng.choice(("red", "blue"))
        img = Image.new("RGB", (size, size), BACKGROUND)
        cx = (rng.randrange(3) + 0.5) * cell
        cy = (rng.randrange(3) + 0.5) * cell
        ImageDraw.Draw(img).ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
        answer = "是。" if colour == "red" else "不是。"
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        out.append((messages, [img], f"probe-{i:05d}-{colour}"))
    return out


def run_probe(model: str, *, steps: int = 200, lr: float = 1e-3, batch_size: int = 16, radius: int = 9,
              every: int = 40, seed: int = 0) -> list[ProbePoint]:
    """Train ``model`` (preset name or checkpoint directory; loaded fresh, nothing is
    written) on the probe with AdamW, full parameters, and evaluate the grounding gap on
    64 held-out records every ``every`` steps."""
    from ftib.models.bundle import load_bundle
    from ftib.stages.common import image_grounding, lm_loss_sum

    torch.manual_seed(seed)
    rng = random.Random(seed)
    bundle = load_bundle(model)
    net, chat = bundle.model, bundle.chat
    if chat.image_processor is None:
        raise SystemExit(f"{model}: a text-only model has no images to probe")
    train, held = probe_records(512, rng, radius), probe_records(64, rng, radius)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    net.train()
    points = []
    for step in range(steps):
        batch = chat.collate([chat.encode(m, imgs) for m, imgs, _ in rng.sample(train, batch_size)])
        labels = batch.pop("labels")
        loss = lm_loss_sum(net, batch, labels) / (labels[:, 1:] != -100).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % every == 0 or step == steps - 1:
            g = image_grounding(net, chat, held)
            net.train()
            points.append(ProbePoint(step=step + 1, loss=loss.item(), gap=g["grounding_gap"],
                                     matched=g["grounding_loss_matched"]))
    return points


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Can this VLM checkpoint learn to look at its images?")
    ap.add_argument("model", help="preset name or save_pretrained directory")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--radius", type=int, default=9, help="circle radius in pixels (64 x 64 image)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for p in run_probe(args.model, steps=args.steps, lr=args.lr, radius=args.radius, seed=args.seed):
        print(f"step {p.step:4d}  loss {p.loss:.3f}  grounding gap {p.gap:.3f}  (answer loss {p.matched:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
