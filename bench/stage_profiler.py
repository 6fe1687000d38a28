"""``ftib profile``: where each stage's step time and memory go.

    ftib profile [CONFIG] [KEY=VALUE ...] [--stages cpt sft] [--steps 5] [--trace] [--out DIR]

Runs ``--steps`` optimiser steps of each selected stage of a recipe (default: the
packaged tiny recipe), each stage on its own from the recipe's model, through the
normal pipeline and shared loop, and writes to ``--out`` (default ``profile/<recipe>``):

* ``profile.json`` — per stage: tokens/s and samples/s, the median step time split into
  data (batch assembly; for GRPO the rollout's generation, rewards and reference
  log-probs are phases of their own, not data time), forward, backward and optimiser (``time/*_s`` metrics
  of :class:`ftib.core.train.Trainer`), peak memory, parameter counts and, on CUDA, MFU;
* ``profile.png`` — the breakdown as stacked bars, throughput in the labels;
* with ``--trace``, ``trace-<stage>.json``: a ``torch.profiler`` Chrome trace of the
  stage (open in ``chrome://tracing`` or https://ui.perfetto.dev).

Definitions:

* Medians are over the steps after the first (the first step pays one-off costs:
  lazy initialisation, allocator growth, kernel autotuning); with ``--steps 1`` the
  one step is used.
* tokens/s = real (non-padding) tokens of those steps / their wall time.
* Peak memory: on CUDA the allocator's peak (``torch.cuda.max_memory_allocated``,
  reset before each stage); on the CPU the process's peak resident set size
  (``VmHWM``, reset before each stage where Linux allows, else the process-lifetime
  ``ru_maxrss``; ``peak_mem_source`` says which).
* MFU (CUDA only) = achieved FLOP/s / the device's peak dense FLOP/s, with achieved
  FLOPs per step = ``6 * N * tokens`` (Kaplan et al. 2020, eq. 2.1: 2N forward + 4N
  backward per token, attention FLOPs ignored), N = all parameters of the model. When
  part of the model is frozen this overstates the work (frozen weights need no weight
  gradient), so MFU is an upper bound there. The peak comes from ``--peak-tflops`` or a
  table of bf16 dense peaks by device name; an unknown device gives ``mfu: null``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("ftib.profile")

# bf16 dense peak TFLOP/s (vendor datasheets; no sparsity).
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "L4": 121.0,
}

PHASES = ("data", "forward", "backward", "optimizer")
GRPO_PHASES = {"generation": "time/generation_s", "reward": "time/reward_s", "ref_logps": "time/ref_logps_s",
               "loss_forward": "time/loss_fwd_s"}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "profile",
        help="run a few steps of each stage and report throughput, time breakdown and memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="YAML recipe (default: the packaged configs/tiny.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    p.add_argument("--stages", nargs="+", metavar="ID", help="stage ids to profile (default: all)")
    p.add_argument("--steps", type=int, default=5, help="optimiser steps per stage (default 5)")
    p.add_argument("--trace", action="store_true", help="also write a torch.profiler Chrome trace per stage")
    p.add_argument("--out", help="output folder (default: profile/<recipe name>)")
    p.add_argument("--peak-tflops", type=float, help="device peak TFLOP/s for MFU (default: by device name)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from ftib.core.cli import recipe_and_overrides

    path, overrides = recipe_and_overrides(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("profile") / path.stem
    report = profile(path, overrides, out, stages=args.stages, steps=args.steps, trace=args.trace,
                     peak_tflops=args.peak_tflops)
    for sid, s in report["stages"].items():
        split = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in s["median_s"].items() if v is not None and k != "step")
        rate = f"{s['tokens_per_s']:.0f} tok/s" if s["tokens_per_s"] else f"{s['samples_per_s']:.2f} samples/s"
        print(f"{sid:<10} {rate:>16}  step {s['median_s']['step'] * 1e3:.1f} ms ({split} ms)  "
              f"peak {s['peak_mem_bytes'] / 2**20:.0f} MiB" + (f"  MFU {s['mfu']:.1%}" if s.get("mfu") else ""))
    print(f"wrote {out / 'profile.json'} and {out / 'profile.png'}")
    return 0


def profile(recipe_path: Path, overrides: list[str], out: Path, *, stages: list[str] | None = None,
            steps: int = 5, trace: bool = False, peak_tflops: float | None = None) -> dict[str, Any]:
    """Profile the stages of a recipe; write ``profile.json`` and ``profile.png`` to ``out``."""
    import torch

    from ftib.bench._kernel_bench import device_name
    from ftib.core.errors import ConfigError
    from ftib.core.pipeline import package_versions, resolve_device
    from ftib.core.recipe import apply_overrides, read_yaml

    if steps < 1:
        raise ConfigError("--steps must be >= 1")
    raw = apply_overrides(read_yaml(Path(recipe_path)), overrides)
    entries = list(raw.get("stages") or [])
    ids = [str(e.get("id", e.get("name"))) for e in entries]
    wanted = stages or ids
    unknown = [s for s in wanted if s not in ids]
    if unknown:
        raise ConfigError(f"--stages: {unknown} are not stage ids of {recipe_path} (it has {ids})")
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(str((raw.get("run") or {}).get("device", "auto")))
    report: dict[str, Any] = {
        "recipe": str(recipe_path), "overrides": overrides, "steps": steps,
        "device": device_name(torch.device(device)),
        "versions": package_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "flop_formula": "6 * model_params * tokens per step (attention ignored); MFU = achieved / peak",
        "stages": {},
    }
    for sid, entry in zip(ids, entries):
        if sid not in wanted:
            continue
        log.info("profiling stage %s (%d steps)", sid, steps)
        report["stages"][sid] = _profile_stage(raw, entry, sid, out, steps, trace, device, peak_tflops, torch)
    (out / "profile.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out / "profile.png")
    return report


def _stage_recipe(raw: dict, entry: dict, steps: int) -> dict:
    """The recipe that runs ``entry`` alone for ``steps`` steps, without evaluators."""
    import copy

    from ftib.core.registry import STAGES, Registry

    entry = copy.deepcopy(entry)
    entry.pop("from", None)
    conf = entry.setdefault("config", {}) or {}
    entry["config"] = conf
    cls = Registry().load(STAGES, entry["name"])
    if is_dataclass(cls.Config) and "train" in {f.name for f in fields(cls.Config)}:
        train = dict(conf.get("train") or {})
        train.update(max_steps=steps, checkpoint_every=0, keep_checkpoints=1, log_every=1)
        train["warmup_steps"] = min(int(train.get("warmup_steps", 0)), steps)
        conf["train"] = train
    return {**{k: v for k, v in raw.items() if k not in ("stages", "evaluators")},
            "stages": [entry], "evaluators": []}


def _profile_stage(raw, entry, sid, out, steps, trace, device, peak_tflops, torch) -> dict[str, Any]:
    import yaml

    from ftib.bench._kernel_bench import device_name, reset_peak_rss, status_bytes
    from ftib.core.pipeline import Pipeline
    from ftib.core.recipe import build_recipe
    from ftib.core.registry import Registry

    stage_raw = _stage_recipe(raw, entry, steps)
    rec_path = out / "recipes" / f"{sid}.yaml"
    rec_path.parent.mkdir(parents=True, exist_ok=True)
    rec_path.write_text(yaml.safe_dump(stage_raw, allow_unicode=True, sort_keys=False))
    recipe = build_recipe(stage_raw, Registry(), source=rec_path)
    run_dir = out / "runs" / sid
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss_reset = reset_peak_rss()
    prof = None
    if trace:
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        prof = torch.profiler.profile(activities=acts, record_shapes=True)
        prof.__enter__()
    try:
        manifest = Pipeline(recipe, run_dir, force=True, progress=False).run()
    finally:
        if prof is not None:
            prof.__exit__(None, None, None)
    if prof is not None:
        prof.export_chrome_trace(str(out / f"trace-{sid}.json"))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r.get("stage") == sid and "step_time_s" in r]
    rows = sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])  # last run's rows
    rows = rows[-steps:]
    timed = rows[1:] if len(rows) > 1 else rows
    med = lambda key: statistics.median(r[key] for r in timed) if all(key in r for r in timed) else None  # noqa: E731
    seconds = sum(r["step_time_s"] for r in timed)
    tokens = sum(r["tokens_per_s"] * r["step_time_s"] for r in timed)
    samples = sum(r["samples_per_s"] * r["step_time_s"] for r in timed)
    metrics = manifest["stages"][sid].get("metrics", {})
    result: dict[str, Any] = {
        "name": entry["name"],
        "steps_timed": len(timed),
        "tokens_per_s": tokens / seconds if seconds else None,
        "samples_per_s": samples / seconds if seconds else None,
        "tokens_per_step": tokens / len(timed) if timed else None,
        "median_s": {"step": med("step_time_s"), "data": med("data_time_s"), "forward": med("time/forward_s"),
                     "backward": med("time/backward_s"), "optimizer": med("time/optimizer_s")},
        "model_params": metrics.get("model_params"),
        "trainable_params": metrics.get("trainable_params"),
        "run_dir": str(run_dir),
    }
    grpo = {k: med(v) for k, v in GRPO_PHASES.items() if timed and v in timed[0]}
    if grpo:
        result["grpo_median_s"] = grpo
    if cuda:
        result["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated())
        result["peak_mem_source"] = "cuda max_memory_allocated"
    else:
        hwm = status_bytes("VmHWM")
        if rss_reset and hwm is not None:
            result["peak_mem_bytes"], result["peak_mem_source"] = hwm, "VmHWM (reset before the stage)"
        else:
            result["peak_mem_bytes"] = int(metrics.get("peak_mem_bytes", 0))
            result["peak_mem_source"] = "ru_maxrss (process lifetime)"
    result["mfu"], result["peak_tflops"] = None, None
    if cuda and result["model_params"] and result["tokens_per_s"]:
        peak = peak_tflops or _peak_tflops(device_name(torch.device(device)))
        if peak:
            achieved = 6.0 * result["model_params"] * result["tokens_per_s"]
            result["achieved_tflops"] = achieved / 1e12
            result["mfu"], result["peak_tflops"] = achieved / (peak * 1e12), peak
    if prof is not None:
        result["trace"] = str(out / f"trace-{sid}.json")
    return result


def _peak_tflops(name: str) -> float | None:
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_TFLOPS[key]
    return None


def plot(report: dict[str, Any], path: Path) -> None:
    """Stacked bars of the median step time per stage (GRPO's rollout phases generation /
    reward / reference log-probs beside data), throughput and peak memory as labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(report["stages"].items())
    colours = {"generation": "#8c564b", "reward": "#e377c2", "ref_logps": "#7f7f7f", "data": "#1f77b4",
               "forward": "#ff7f0e", "backward": "#2ca02c", "optimizer": "#d62728", "other": "#bcbd22"}
    fig, ax = plt.subplots(figsize=(9, 1.8 + 0.7 * max(1, len(stages))))
    seen: set[str] = set()
    for y, (_sid, s) in enumerate(stages):
        m = s["median_s"]
        parts: list[tuple[str, float]] = []
        g = s.get("grpo_median_s", {})
        for k in ("generation", "reward", "ref_logps"):
            if g.get(k) is not None:
                parts.append((k, g[k]))
        # data_time_s already excludes the GRPO rollout phases (the task's collate_times).
        parts.append(("data", m["data"] or 0.0))
        for k in ("forward", "backward", "optimizer"):
            parts.append((k, m[k] or 0.0))
        parts.append(("other", max(0.0, (m["step"] or 0.0) - sum(v for _, v in parts))))
        left = 0.0
        for k, v in parts:
            ax.barh(y, v * 1e3, left=left, color=colours[k], label=None if k in seen else k)
            seen.add(k)
            left += v * 1e3
        rate = f"{s['tokens_per_s']:.0f} tok/s" if s["tokens_per_s"] else f"{s['samples_per_s']:.2f} samples/s"
        mfu = f", MFU {s['mfu']:.1%}" if s.get("mfu") else ""
        ax.text(left, y, f"  {rate}, {s['peak_mem_bytes'] / 2**20:.0f} MiB{mfu}", va="center", fontsize=8)
    ax.set_yticks(range(len(stages)), [sid for sid, _ in stages])
    ax.invert_yaxis()
    ax.set_xlabel("median step time (ms)")
    ax.set_title(f"ftib profile — {report['device']}", fontsize=10, pad=20)
    ax.legend(fontsize=7, ncol=len(seen), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.margins(x=0.35)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
