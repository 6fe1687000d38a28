"""The main job end to end: `ftib run` (no arguments) on the embedded default, as a new
user runs it, and what each stage is supposed to do, checked on the run's own manifest.

Slow (several minutes on 2 cores): CI runs it with ``pytest -m slow``. CI has just run
the main job itself (README, command 1), so it points ``FTIB_MAIN_JOB_RUN_DIR`` at that
run directory: the test then runs the same command on it, which must find every stage
and evaluation completed, reuse them and print the same summary (resume of a completed
run), instead of training a second time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

MULTIMODAL = ("pope", "mmbench", "mme", "binary_vqa", "corevqa")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One full default run in a fresh working directory (cache shared with the session)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = os.environ.get("FTIB_MAIN_JOB_RUN_DIR")
    if done:
        run_dir = Path(done).resolve()
        assert (run_dir / "manifest.json").is_file(), f"FTIB_MAIN_JOB_RUN_DIR={done} holds no finished run"
        before = json.loads((run_dir / "manifest.json").read_text())
        cmd = [sys.executable, "-m", "ftib.core.cli", "run", "--no-progress", "--run-dir", str(run_dir)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-4000:]
        manifest = json.loads((run_dir / "manifest.json").read_text())
        # nothing was recomputed: every stage and evaluation kept its recorded metrics
        assert not manifest.get("recomputed"), manifest.get("recomputed")
        for section in ("stages", "evals"):
            assert {k: v.get("metrics") for k, v in manifest[section].items()} == \
                   {k: v.get("metrics") for k, v in before[section].items()}, section
        return run_dir, manifest, out.stdout
    work = tmp_path_factory.mktemp("main-job")
    out = subprocess.run([sys.executable, "-m", "ftib.core.cli", "run", "--no-progress"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-4000:]
    run_dir = work / "runs" / "tiny"
    return run_dir, json.loads((run_dir / "manifest.json").read_text()), out.stdout


def test_everything_completes_and_reports(run):
    run_dir, manifest, stdout = run
    assert manifest["status"] == "completed"
    assert all(r["status"] == "completed" for r in manifest["stages"].values())
    assert all(r["status"] == "completed" for r in manifest["evals"].values())
    for name in ("report.md", "scores_by_stage.png", "training_curves.png"):
        assert (run_dir / name).stat().st_size > 0, name
    # the final summary table is printed
    assert "kind" in stdout and "sft/pope" in stdout and "report:" in stdout


def test_each_training_stage_learns(run):
    _, manifest, _ = run
    stages = manifest["stages"]
    for sid in ("cpt", "align", "sft"):
        m = stages[sid]["metrics"]
        assert m["loss_last_10pct"] < 0.8 * m["loss_first_10pct"], (sid, m)
    # align makes the captions depend on the pictures (0 for an untrained model)
    a = stages["align"]["metrics"]
    assert abs(a["grounding_gap_before"]) < 0.05 and a["grounding_gap"] > 0.15, a
    # the SFT answers stay grounded
    assert stages["sft"]["metrics"]["grounding_gap"] > 0.05, stages["sft"]["metrics"]
    # GRPO raises the mean reward (first vs last 20% of steps)
    g = stages["grpo"]["metrics"]
    assert g["reward_last_20pct"] > g["reward_first_20pct"] + 0.03, g  # measured +0.076


def test_ftibbench_after_sft_is_answered_and_beats_the_untrained_model(run):
    _, manifest, _ = run
    ev = manifest["evals"]
    for bench in MULTIMODAL:
        base, sft = ev[f"base/{bench}"]["metrics"], ev[f"sft/{bench}"]["metrics"]
        assert sft["unparsed_ratio"] <= 0.05, (bench, sft)
        assert base["unparsed_ratio"] >= 0.9, (bench, base)  # the untrained model cannot answer
    assert ev["sft/mme"]["metrics"]["perception"] >= 1.5 * ev["base/mme"]["metrics"]["perception"]
    assert ev["sft/pope"]["metrics"]["accuracy"] > ev["base/pope"]["metrics"]["accuracy"]
    assert ev["sft/binary_vqa"]["metrics"]["accuracy"] > ev["base/binary_vqa"]["metrics"]["accuracy"]


def test_translation_and_tax_are_measured(run):
    _, manifest, _ = run
    ev = manifest["evals"]
    for point in ("sft", "grpo"):
        m = ev[f"{point}/translation"]["metrics"]
        assert {"bleu", "chrf", "similarity"} <= set(m), m
    tax = ev["grpo/alignment_tax"]["metrics"]
    assert {"nll_increase_mean", "nll_increase_p90"} <= set(tax)
