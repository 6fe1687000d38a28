"""Golden loss curves (STYLE.md, habit 8): the first steps of every stage of the
embedded default recipe reproduce the curves stored in ``tests/assets/losses/tiny.json``
(written by the command recorded in the asset, within its stated tolerance)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftib.bench.golden_losses import compare, stage_losses

ROOT = Path(__file__).resolve().parent.parent
ASSET = ROOT / "tests" / "assets" / "losses" / "tiny.json"


def test_compare_catches_a_moved_curve():
    golden = {"cpt": [7.0, 6.0], "grpo": [0.0, 0.01]}
    assert compare(golden, golden) == []
    assert compare(golden, {"cpt": [7.0, 6.1], "grpo": [0.0, 0.01]})  # 1.7% off
    assert compare(golden, {"cpt": [7.0, 6.0], "grpo": [1e-3, 0.01]})  # past atol near 0
    assert compare(golden, {"cpt": [7.0]})  # a step and a stage missing
    # a sampling stage is compared on its first steps only (rollouts diverge across CPUs)
    assert compare(golden, {"cpt": [7.0, 6.0], "grpo": [0.0, 0.5]}) == []
    assert compare(golden, {"cpt": [7.0, 6.0], "grpo": [0.0, 0.5]}, sampled={})


def test_tiny_recipe_reproduces_its_golden_curves(tmp_path: Path, ftib_cache):
    """In the session's own cache, as the asset was written: the reward encoder built on
    first use depends on the torch thread count it was trained under, so one already in
    the home folder's cache may give other GRPO losses."""
    asset = json.loads(ASSET.read_text(encoding="utf-8"))
    recipe = ROOT / asset["recipe"]
    got = stage_losses(recipe, asset["steps"], tmp_path / "run")
    problems = compare(asset["losses"], got, asset["rtol"], asset["atol"])
    assert not problems, ("the loss curves moved; if that is intended, regenerate with\n  "
                          + asset["command"] + "\n" + "\n".join(problems))
