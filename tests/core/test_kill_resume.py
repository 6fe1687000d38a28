"""kill -9 at random points of every stage (CPT, Align, SFT, GRPO) of the tiny recipe:
after resuming, the manifest's metrics and the metrics log equal an uninterrupted
run's (timings aside) to float32 rounding. Slow: seven ``ftib run`` processes on the tiny preset.

Why not bit for bit: a resumed process allocates its buffers at other addresses, and
MKL's CPU GEMMs may take a different code path for differently aligned data (Intel's
"conditional numerical reproducibility"; ``MKL_CBWR`` pins it), so a loss can differ in
its last bit or two from the uninterrupted run's (seen once in CI: 7.32262659 vs
7.32262564 at one step). Any real resume error (a skipped or repeated batch, a lost
optimizer state, a wrong RNG state) moves losses by far more than ``REL``."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import yaml

pytestmark = pytest.mark.slow

STEPS = 5
TRAIN = {"max_steps": STEPS, "batch_size": 2, "lr": 1.0e-3, "warmup_steps": 1, "checkpoint_every": 1,
         "keep_checkpoints": 2}
RECIPE = {
    "run": {"seed": 0, "device": "cpu"},
    "model": "tiny-qwen3-vl",
    "stages": [
        {"name": "cpt", "config": {"data": ["ftibworld:tiny"], "block_size": 32, "max_documents": 64,
                                   "train": TRAIN}},
        {"name": "align", "config": {"data": "ftibworld:tiny", "max_records": 32, "train": TRAIN}},
        {"name": "sft", "config": {"data": "ftibworld:tiny", "max_records": 32, "train": TRAIN}},
        {"name": "grpo", "config": {"data": "ftibworld:tiny", "max_prompts": 8, "group_size": 2,
                                    "max_new_tokens": 6, "rewards": [{"name": "language"}], "train": TRAIN}},
    ],
}
REL = 1e-6  # ~8 float32 ulps
# Fields that measure time or memory, not results.
TIMING = {"time", "tokens_per_s", "samples_per_s", "peak_mem_bytes"}


def _clean(row):
    # ``*time_s`` (step_time_s, data_time_s, a plugin's monitor/time_s ...) and ``time/*``
    # are wall-clock seconds by the metrics' naming rule
    return {k: v for k, v in row.items()
            if k not in TIMING and not k.startswith("time/") and not k.endswith("time_s")}


def _results(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    metrics = {sid: _clean(rec["metrics"]) for sid, rec in manifest["stages"].items()}
    rows = [_clean(json.loads(x)) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return metrics, rows


def _differences(a, b, where=""):
    """Where ``a`` and ``b`` differ: other keys, other non-float values, or floats further
    apart than ``REL`` (relative)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(a.keys() ^ b.keys())}"]
        return [d for k in a for d in _differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if abs(a - b) <= REL * max(abs(a), abs(b), 1e-12) else [f"{where}: {a!r} vs {b!r}"]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def test_differences_catch_what_a_bad_resume_changes():
    assert _differences({"a": [1.0, 2.0]}, {"a": [1.0, 2.0 * (1 + 1e-7)]}) == []
    assert _differences({"a": [1.0, 2.0]}, {"a": [1.0, 2.001]}) == [".a[1]: 2.0 vs 2.001"]
    assert _differences({"a": 1, "b": 2}, {"a": 1}) == [": keys ['b']"]
    assert _differences([{"step": 3}], [{"step": 4}]) == ["[0].step: 3 vs 4"]


def test_kill_at_random_points_of_every_stage_resumes_to_the_same_outputs(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    env = {**os.environ, "FTIB_CACHE_DIR": os.environ.get("FTIB_CACHE_DIR", str(tmp_path / "cache"))}
    cmd = [sys.executable, "-m", "ftib.core.cli", "run", str(recipe), "--no-progress"]
    straight = tmp_path / "straight"
    out = subprocess.run(cmd + ["--run-dir", str(straight)], env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]

    rng = random.Random(16)
    stages = [s["name"] for s in RECIPE["stages"]]
    # one point in every stage plus one more anywhere: (stage, step after whose checkpoint to kill)
    points = [(s, rng.randrange(STEPS - 1)) for s in stages] + [(rng.choice(stages), rng.randrange(STEPS - 1))]
    points.sort(key=lambda p: (stages.index(p[0]), p[1]))
    killed = tmp_path / "killed"
    done = set()
    for stage, step in points:
        if (stage, step) in done:
            continue
        done.add((stage, step))
        marker = killed / "stages" / stage / "steps" / f"step-{step:06d}" / "checksums.json"
        proc = subprocess.Popen(cmd + ["--run-dir", str(killed)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 900
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed at {stage} step {step}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    out = subprocess.run(cmd + ["--run-dir", str(killed)], env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not list(killed.rglob(".step-*.tmp-*")), "temporaries of the killed runs are cleaned"
    a_metrics, a_rows = _results(straight)
    b_metrics, b_rows = _results(killed)
    assert not _differences(b_metrics, a_metrics), _differences(b_metrics, a_metrics)
    assert not _differences(b_rows, a_rows), _differences(b_rows, a_rows)[:10]
