"""`ftib profile` and the loop's phase timings it reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from ftib.bench.stage_profiler import plot

# plot()'s bar colours per phase and its figure geometry (9 in wide, 1.8 + 0.7 in per stage, 120 dpi).
COLOURS = {"generation": (0x8c, 0x56, 0x4b), "reward": (0xe3, 0x77, 0xc2), "ref_logps": (0x7f, 0x7f, 0x7f),
           "data": (0x1f, 0x77, 0xb4), "forward": (0xff, 0x7f, 0x0e), "backward": (0x2c, 0xa0, 0x2c),
           "optimizer": (0xd6, 0x27, 0x28), "other": (0xbc, 0xbd, 0x22)}


def png_pixels(path) -> tuple[tuple[int, int], dict[str, int]]:
    """The image's (width, height) and, per phase, how many pixels have its bar colour."""
    from PIL import Image  # noqa: PLC0415

    with Image.open(path) as im:
        assert im.format == "PNG"
        rgb = im.convert("RGB")
        counts = {c: n for n, c in rgb.getcolors(maxcolors=rgb.width * rgb.height)}
        return rgb.size, {k: counts.get(c, 0) for k, c in COLOURS.items()}


def test_loop_logs_phase_times_that_fit_in_the_step(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "core"))
    from test_train import make_ctx, ns  # noqa: PLC0415

    from ftib.core.train import TrainConfig, Trainer

    Trainer(ns["TinyTask"](), TrainConfig(max_steps=3, batch_size=4, grad_accum=2), make_ctx(tmp_path),
            progress=False).train()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for r in rows:
        parts = [r["data_time_s"], r["time/forward_s"], r["time/backward_s"], r["time/optimizer_s"]]
        assert all(p > 0 for p in parts), r
        assert sum(parts) <= r["step_time_s"] * (1 + 1e-9), r


def test_profile_command_writes_json_png_and_trace(tmp_path, monkeypatch):
    monkeypatch.setenv("FTIB_CACHE_DIR", str(tmp_path / "cache"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": "tiny-qwen3-vl", "stages": [
        {"name": "sft", "config": {"data": "ftibworld:tiny", "max_records": 16, "train": {"batch_size": 4}}},
        {"name": "align", "config": {"data": "ftibworld:tiny", "max_records": 16}}]}))
    out = tmp_path / "prof"
    proc = subprocess.run([sys.executable, "-m", "ftib.core.cli", "profile", str(recipe), "--stages", "sft",
                           "--steps", "3", "--trace", "--out", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "profile.json").read_text())
    assert list(report["stages"]) == ["sft"] and report["steps"] == 3
    s = report["stages"]["sft"]
    assert s["steps_timed"] == 2 and s["tokens_per_s"] > 0 and s["samples_per_s"] > 0
    m = s["median_s"]
    assert all(m[k] > 0 for k in ("step", "data", "forward", "backward", "optimizer")), m
    assert s["peak_mem_bytes"] > 0 and s["model_params"] >= s["trainable_params"] > 0
    assert s["mfu"] is None  # CPU: no MFU
    assert s["name"] == "sft" and "grpo_median_s" not in s
    assert sum(m[k] for k in ("data", "forward", "backward", "optimizer")) <= m["step"] * (1 + 1e-9), m
    assert s["tokens_per_step"] == pytest.approx(s["tokens_per_s"] * m["step"], rel=0.5)
    size, pixels = png_pixels(out / "profile.png")
    assert size == (9 * 120, round((1.8 + 0.7) * 120))  # one stage
    assert pixels["forward"] > 0 and pixels["backward"] > 0, pixels  # the bar is drawn
    assert pixels["generation"] == pixels["reward"] == 0, pixels  # no GRPO split for SFT
    trace = json.loads((out / "trace-sft.json").read_text())
    assert any("aten::" in str(e.get("name", "")) for e in trace["traceEvents"])
    bad = subprocess.run([sys.executable, "-m", "ftib.core.cli", "profile", str(recipe), "--stages", "nope",
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--stages: ['nope'] are not stage ids" in bad.stderr


def test_plot_splits_grpo_rollout(tmp_path):
    stage = {"tokens_per_s": None, "samples_per_s": 3.0, "peak_mem_bytes": 2**30, "mfu": None,
             "median_s": {"step": 1.0, "data": 0.6, "forward": 0.2, "backward": 0.1, "optimizer": 0.05},
             "grpo_median_s": {"generation": 0.4, "reward": 0.1, "ref_logps": 0.05, "loss_forward": 0.2}}
    # GRPO's data time excludes its rollout phases (the task's collate_times): 0.05 s here.
    grpo = {**stage, "median_s": {**stage["median_s"], "data": 0.05}}
    plot({"device": "test", "stages": {"grpo": grpo, "sft": {**stage, "grpo_median_s": {}}}}, tmp_path / "p.png")
    size, pixels = png_pixels(tmp_path / "p.png")
    assert size == (9 * 120, round((1.8 + 0.7 * 2) * 120))  # two stages
    assert all(n > 0 for n in pixels.values()), pixels  # every phase has a bar segment
    # GRPO's rollout phases are bars of their own: generation (0.4 s) outdraws reward
    # (0.1 s); data (0.6 s in the SFT row, 0.05 s in GRPO's) outdraws generation.
    assert pixels["generation"] > 2 * pixels["reward"], pixels
    assert pixels["data"] > pixels["generation"], pixels


@pytest.mark.parametrize("name,expected", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                           ("NVIDIA A100-SXM4-80GB", 312.0), ("Some CPU", None)])
def test_peak_table(name, expected):
    from ftib.bench.stage_profiler import _peak_tflops

    assert _peak_tflops(name) == expected
