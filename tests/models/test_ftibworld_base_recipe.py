"""The `ftibworld-base` recipe reproduces its first steps: losses against a stored curve.

Slow: builds the ``base`` FTibWorld (a few minutes on two cores) and runs the recipe's
first stage in full plus the first 20 steps of the second (`ground`: 10 warm-up steps,
then a constant rate), whose learning rates do not depend on the stage's length, so they
match the full run's step for step. The curve in
tests/assets/ftibworld_base_curve.json is the full run's, with the command that produced it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CURVE = ROOT / "tests" / "assets" / "ftibworld_base_curve.json"


@pytest.mark.slow
def test_recipe_first_steps_match_the_stored_curve(tmp_path):
    stored = json.loads(CURVE.read_text())
    recipe = yaml.safe_load((ROOT / "configs" / "ftibworld-base.yaml").read_text())
    keep = list(stored["losses"])
    recipe["stages"] = [s for s in recipe["stages"] if s["id"] in keep]
    for s in recipe["stages"]:
        s["config"]["train"]["max_steps"] = stored["steps"][s["id"]]
    recipe["evaluators"] = []
    path = tmp_path / "first-steps.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    env = dict(os.environ, FTIB_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "ftib.core.cli", "run", str(path), "--run-dir",
                          str(tmp_path / "run"), "--no-progress"], env=env, capture_output=True, text=True,
                         timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    got: dict[str, list[float]] = {k: [] for k in keep}
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("stage") in got and "loss" in rec and "step" in rec:
            got[rec["stage"]].append(rec["loss"])
    for stage, want in stored["losses"].items():
        have = got[stage][: len(want)]
        assert len(have) == len(want), (stage, len(have), len(want))
        worst = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(have, want))
        # fp32 on CPU; thread counts change reduction orders, so allow a small drift
        assert worst <= stored["rtol"], f"{stage}: worst relative loss deviation {worst:.4f} > {stored['rtol']} " \
            f"(curve from: {stored['command']})"
