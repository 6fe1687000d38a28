"""Golden loss curves: the first steps' losses of every stage of a recipe, stored as a
test asset and compared in CI (STYLE.md, habit 8: numerics assured in layers).

A curve is produced by running the recipe with no evaluators and every stage cut to its
first ``steps`` optimiser steps (``log_every: 1``, one checkpoint at the end), on the
CPU in float32, and reading each stage's ``loss`` rows from ``metrics.jsonl``. The asset
records the command that wrote it, the versions it ran under and the tolerance the
comparison uses.

Regenerate after a change that is meant to move the numbers (and say why in the commit)::

    python -m ftib.bench.golden_losses --recipe configs/tiny.yaml --steps 6 \\
        --write tests/assets/losses/tiny.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

from ftib.core.pipeline import Pipeline, package_versions
from ftib.core.recipe import build_recipe, read_yaml
from ftib.core.registry import Registry
from ftib.core.rundir import CACHE_ENV, iter_jsonl

# Relative tolerance of the comparison. The curves are computed in float32 on the CPU;
# the first steps of a tiny model agree to ~1e-6 between runs of one build, and to
# ~1e-4 across torch/BLAS builds (summation order). 2e-3 leaves room for the latter and
# still catches any change of data, initialisation, loss or optimiser. GRPO's loss is
# ~0 on steps whose groups all have equal rewards (advantages exactly 0): there the
# absolute tolerance applies.
RTOL = 2e-3
ATOL = 1e-5
# Stages that sample: only their first steps are compared. GRPO's step k > 0 rolls out
# from the weights step k-1 trained, and one sampled token that flips changes the whole
# rollout after it. Across CPU types the float32 reductions differ enough for that: on
# 2026-12-03 the asset's GRPO steps 1-5 came out different on an AVX-512 host (the same
# packages, the same code as when they were written), while every other stage agreed
# within RTOL. Step 0 rolls out from the SFT weights, which the curves before it check.
SAMPLED_STEPS = {"grpo": 1}


def recipe_for_curves(raw: dict[str, Any], steps: int) -> dict[str, Any]:
    """The recipe cut to ``steps`` steps per stage, evaluators removed, CPU float32."""
    raw = copy.deepcopy(raw)
    raw["evaluators"] = []
    run = dict(raw.get("run") or {})
    run.update(device="cpu", dtype="float32")
    raw["run"] = run
    for stage in raw.get("stages") or []:
        cfg = stage.setdefault("config", {})
        train = dict(cfg.get("train") or {})
        train.update(max_steps=steps, log_every=1, checkpoint_every=0)
        train["warmup_steps"] = min(int(train.get("warmup_steps", 0)), max(steps - 1, 0))
        cfg["train"] = train
    return raw


def stage_losses(recipe_path: Path, steps: int, run_dir: Path) -> dict[str, list[float]]:
    """Run the cut recipe in ``run_dir`` and return ``{stage id: [loss per step]}``."""
    raw = recipe_for_curves(read_yaml(recipe_path), steps)
    recipe = build_recipe(raw, Registry(), source=recipe_path)
    Pipeline(recipe, run_dir, progress=False).run()
    curves: dict[str, dict[int, float]] = {}
    for _, row in iter_jsonl(run_dir / "metrics.jsonl"):
        if "stage" in row and "loss" in row:
            curves.setdefault(row["stage"], {})[int(row["step"])] = float(row["loss"])
    return {sid: [by_step[s] for s in sorted(by_step)] for sid, by_step in curves.items()}


def compare(expected: dict[str, list[float]], got: dict[str, list[float]], rtol: float = RTOL,
            atol: float = ATOL, sampled: dict[str, int] | None = None) -> list[str]:
    """Human-readable differences between two sets of curves (empty when they agree).
    ``sampled`` (default :data:`SAMPLED_STEPS`): stages compared on their first steps only."""
    sampled = SAMPLED_STEPS if sampled is None else sampled
    problems = []
    for sid in sorted(set(expected) | set(got)):
        want, have = expected.get(sid), got.get(sid)
        if want is None or have is None:
            problems.append(f"stage {sid!r}: {'missing from the run' if have is None else 'not in the asset'}")
            continue
        if len(want) != len(have):
            problems.append(f"stage {sid!r}: {len(have)} steps, asset has {len(want)}")
            continue
        n = sampled.get(sid, len(want))
        for step, (w, h) in enumerate(zip(want[:n], have[:n])):
            if abs(h - w) > atol + rtol * abs(w):
                problems.append(f"stage {sid!r} step {step}: loss {h:.6g}, golden {w:.6g} "
                                f"(atol {atol} + rtol {rtol})")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write or check golden loss curves of a recipe.")
    ap.add_argument("--recipe", type=Path, default=Path("configs/tiny.yaml"))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--write", type=Path, help="write the curves to this JSON asset")
    ap.add_argument("--check", type=Path, help="compare with this JSON asset")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ftib-golden-") as tmp:
        # A fresh cache (presets, worlds, the reward encoder built on first use), as on a
        # clean machine and in the test: an encoder cached under another torch thread
        # count moves the GRPO curve.
        with mock.patch.dict(os.environ, {CACHE_ENV: str(Path(tmp) / "cache")}):
            curves = stage_losses(args.recipe, args.steps, Path(tmp) / "run")
    if args.write:
        versions = package_versions()
        asset = {
            "command": f"python -m ftib.bench.golden_losses --recipe {args.recipe.as_posix()} "
                       f"--steps {args.steps} --write {args.write.as_posix()}",
            "recipe": args.recipe.as_posix(),
            "steps": args.steps,
            "rtol": RTOL,
            "atol": ATOL,
            # every tracked package: an upstream release can move the curves
            "versions": versions,
            "losses": curves,
        }
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(json.dumps(asset, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.write}: " + ", ".join(f"{k} {len(v)} steps" for k, v in curves.items()))
    if args.check:
        asset = json.loads(args.check.read_text(encoding="utf-8"))
        problems = compare(asset["losses"], curves, asset.get("rtol", RTOL), asset.get("atol", ATOL))
        print("\n".join(problems) if problems else "curves agree")
        return 1 if problems else 0
    if not args.write:
        print(json.dumps(curves, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
