"""The alignment-tax study of the semantic-GRPO paper: two arms, a learning-rate sweep
per arm, several seeds at each arm's best rate, mean ± std and a plot.

    python -m ftib.evals.tax_study configs/tax-study.yaml --out runs/tax-study-seeds

The recipe holds both arms and their evaluators (``configs/tax-study.yaml``). An arm is
a list of its stages (``--arm sft=strong``, ``--arm grpo=cold,grpo``, the defaults);
stages no arm names are shared by every arm (they run first, in each arm's run
directory: each run is a whole ``ftib run``). The study:

1. **sweep**: each arm's last stage at every learning rate of ``--sweep ARM=LR,LR,...``
   (one run per rate, seed ``--sweep-seed``); the best rate of an arm is the one with
   the highest ``--select`` metric (default ``translation/similarity``, the paper's
   semantic quality) at the arm's last stage;
2. **seeds**: each arm at its best rate for every seed of ``--seeds`` (the sweep's run
   of that seed is reused: same recipe, same run directory, so ``ftib run`` resumes it);
3. **report**: ``sweep.json``, ``results.json`` (every run's metrics), ``report.md``
   (the sweep, mean ± std per arm over seeds, the per-seed values, wall time) and
   ``tax_study.png``.

Each run is ``ftib run <recipe> --run-dir <out>/runs/<arm>-lr<lr>-seed<seed>`` in a
subprocess, on a recipe written beside it (``<out>/recipes``): re-running the study
resumes every run where it stopped and skips completed ones. A run that fails stops the
study with the run's directory and the last lines of its log.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ftib.core import ConfigError
from ftib.core.errors import FtibError, did_you_mean

__all__ = ["DEFAULT_ARMS", "arm_recipe", "collect_arm", "main", "references", "summarise"]

#: The paper's two arms: (a) strong SFT on all pairs; (b) cold-start SFT, then GRPO.
DEFAULT_ARMS: dict[str, tuple[str, ...]] = {"sft": ("strong",), "grpo": ("cold", "grpo")}
#: Metrics shown in the tables and the plot: (column, label, higher is better, chance).
COLUMNS: tuple[tuple[str, str, bool, float | None], ...] = (
    ("translation/similarity", "similarity", True, None),
    ("translation/bleu", "BLEU", True, None),
    ("translation/chrf", "chrF", True, None),
    ("alignment_tax/nll_increase_mean", "zh NLL increase mean", False, None),
    ("alignment_tax/nll_increase_p90", "zh NLL increase p90", False, None),
    ("alignment_tax/kl_mean", "zh KL(base‖adapted)", False, None),
    ("pope_zh/accuracy", "zh POPE accuracy", True, 0.5),
    ("binary_vqa_zh/balanced_accuracy", "zh BinaryVQA balanced acc.", True, 0.5),
    ("mmbench_zh/circular", "zh MMBench circular", True, 0.25 ** 4),
)


def _sid(entry: Mapping[str, Any]) -> str:
    return str(entry.get("id") or entry.get("name"))


def arm_recipe(raw: Mapping[str, Any], arms: Mapping[str, Sequence[str]], arm: str, lr: float | None,
               seed: int) -> dict[str, Any]:
    """The recipe of one run: the shared stages and ``arm``'s stages (every other arm's
    left out), the evaluators after them (``base`` kept), ``run.seed`` and the learning
    rate of the arm's last stage."""
    from ftib.core.recipe import apply_overrides

    stages = raw.get("stages") or []
    ids = [_sid(s) for s in stages]
    other = {s for a, ss in arms.items() if a != arm for s in ss} - set(arms[arm])
    for a, ss in arms.items():
        for s in ss:
            if s not in ids:
                raise ConfigError(f"--arm {a}: the recipe has no stage {s!r}; {did_you_mean(s, ids)}")
    keep = [s for s in stages if _sid(s) not in other]
    kept = {_sid(s) for s in keep}
    evaluators = []
    for e in raw.get("evaluators") or []:
        after = [p for p in (e.get("after") or []) if p == "base" or p in kept]
        if after:
            evaluators.append({**e, "after": after})
    out = {**raw, "stages": keep, "evaluators": evaluators}
    overrides = [f"run.seed={seed}"] + ([f"stages.{arms[arm][-1]}.train.lr={lr!r}"] if lr is not None else [])
    return apply_overrides(out, overrides)


def _run_name(arm: str, lr: float | None, seed: int) -> str:
    return f"{arm}-lr{lr:g}-seed{seed}" if lr is not None else f"{arm}-seed{seed}"


def run_one(out: Path, raw: Mapping[str, Any], arms: Mapping[str, Sequence[str]], arm: str, lr: float | None,
            seed: int, progress: bool, threads: int | None = None) -> Path:
    """Write the run's recipe and ``ftib run`` it (resuming a run left unfinished);
    ``threads`` sets its ``OMP_NUM_THREADS`` (parallel runs share the cores)."""
    import yaml

    name = _run_name(arm, lr, seed)
    recipe = out / "recipes" / f"{name}.yaml"
    recipe.parent.mkdir(parents=True, exist_ok=True)
    recipe.write_text(yaml.safe_dump(arm_recipe(raw, arms, arm, lr, seed), allow_unicode=True, sort_keys=False),
                      encoding="utf-8")
    run_dir = out / "runs" / name
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "ftib.core.cli", "run", str(recipe), "--run-dir", str(run_dir)]
    if not progress:
        cmd.append("--no-progress")
    print(f"[tax-study] {name}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    with log.open("a", encoding="utf-8") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False, env=env).returncode
    if rc != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise FtibError(f"tax study: run {run_dir} failed (exit {rc}); its log {log} ends:\n" + "\n".join(tail))
    return run_dir


def collect_arm(run_dir: Path, arms: Mapping[str, Sequence[str]], arm: str) -> dict[str, float]:
    """``<evaluator id>/<metric>`` at the arm's last stage; the references' scores as
    ``@<point>/<evaluator id>/<metric>`` (``base`` and the shared stages: what the arm
    starts from); ``seconds`` of the arm's own stages (from the manifest)."""
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    last = arms[arm][-1]
    out: dict[str, float] = {}
    for key, rec in manifest.get("evals", {}).items():
        point, ev_id = key.split("/", 1)
        if rec.get("status") != "completed" or (point in arms[arm] and point != last):
            continue
        prefix = f"{ev_id}/" if point == last else f"@{point}/{ev_id}/"
        for m, v in (rec.get("metrics") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[prefix + m] = float(v)
    stages = manifest.get("stages", {})
    out["seconds"] = float(sum(stages.get(s, {}).get("seconds") or 0.0 for s in arms[arm]))
    return out


def references(per_seed: Mapping[str, Mapping[int, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """``point -> metric -> mean over every run`` of the reference points (``@point/``)."""
    vals: dict[str, dict[str, list[float]]] = {}
    for runs in per_seed.values():
        for r in runs.values():
            for k, v in r.items():
                if k.startswith("@"):
                    point, rest = k[1:].split("/", 1)
                    vals.setdefault(point, {}).setdefault(rest, []).append(v)
    return {p: {k: sum(v) / len(v) for k, v in ms.items()} for p, ms in vals.items()}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def summarise(per_seed: Mapping[str, Mapping[int, Mapping[str, float]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per arm and metric: ``mean``, ``std`` (sample, n - 1), ``n`` and the values."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for arm, runs in per_seed.items():
        keys = sorted(set.intersection(*(set(r) for r in runs.values()))) if runs else []
        out[arm] = {}
        for k in keys:
            vals = [runs[s][k] for s in sorted(runs)]
            m, sd = _mean_std(vals)
            out[arm][k] = {"mean": m, "std": sd, "n": len(vals), "values": vals}
    return out


def _columns(summary: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, bool, float | None]]:
    """The :data:`COLUMNS` every arm of ``summary`` has."""
    return [c for c in COLUMNS if all(c[0] in summary[a] for a in summary)]


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def markdown(recipe: Path, arms: Mapping[str, Sequence[str]], sweep: Mapping[str, Mapping[str, Any]],
             best: Mapping[str, float | None], summary: Mapping[str, Mapping[str, Mapping[str, Any]]],
             per_seed: Mapping[str, Mapping[int, Mapping[str, float]]], select: str,
             overrides: Sequence[str] = ()) -> str:
    cols = _columns(summary)
    lines = [f"# Alignment-tax study: {', '.join(arms)}", "",
             f"Recipe `{recipe}`; arms: " + "; ".join(f"**{a}** = {' → '.join(ss)}" for a, ss in arms.items())
             + f". Best learning rate per arm by `{select}` at the arm's last stage."
             + (f" Overrides in every run: {', '.join(f'`{o}`' for o in overrides)}." if overrides else ""), ""]
    if sweep:
        lines += ["## Learning-rate sweep", "", "| arm | lr | " + " | ".join(c[1] for c in cols) + " |",
                  "|---|---:|" + "---:|" * len(cols)]
        for arm, rows in sweep.items():
            for lr, metrics in rows.items():
                mark = " **(best)**" if best.get(arm) is not None and float(lr) == best[arm] else ""
                lines.append(f"| {arm} | {float(lr):g}{mark} | "
                             + " | ".join(_fmt(metrics.get(c[0])) for c in cols) + " |")
        lines.append("")
    seeds = sorted({s for runs in per_seed.values() for s in runs})
    lines += [f"## Seeds {', '.join(map(str, seeds))}: mean ± std (n − 1)", "",
              "| arm | lr | " + " | ".join(f"{c[1]} {'↑' if c[2] else '↓'}" for c in cols) + " | seconds |",
              "|---|---:|" + "---:|" * (len(cols) + 1)]
    for arm in summary:
        cells = [f"{_fmt(summary[arm][c[0]]['mean'])} ± {_fmt(summary[arm][c[0]]['std'])}" for c in cols]
        secs = summary[arm].get("seconds", {}).get("mean")
        rate = best.get(arm)
        lines.append(f"| {arm} | {'–' if rate is None else f'{rate:g}'} | " + " | ".join(cells)
                     + f" | {_fmt(secs, 0)} |")
    for point, ms in references(per_seed).items():
        lines.append(f"| {point} (reference) | – | " + " | ".join(_fmt(ms.get(c[0])) for c in cols) + " | – |")
    lines += ["", "Per seed:", "", "| arm | seed | " + " | ".join(c[1] for c in cols) + " |",
              "|---|---:|" + "---:|" * len(cols)]
    for arm, runs in per_seed.items():
        for s in sorted(runs):
            lines.append(f"| {arm} | {s} | " + " | ".join(_fmt(runs[s].get(c[0])) for c in cols) + " |")
    if {"sft", "grpo"} <= set(summary):
        lines += ["", "## Differences (grpo − sft)", ""]
        for key, label, higher, _ in cols:
            a, b = summary["grpo"][key], summary["sft"][key]
            d = a["mean"] - b["mean"]
            se = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
            t = d / se if se > 0 else math.inf if d else 0.0
            better = (d > 0) == higher if d else None
            verdict = "no difference" if better is None else ("grpo better" if better else "sft better")
            lines.append(f"- {label}: {d:+.3f} (Welch t = {t:+.2f}; {verdict})")
    lines.append("")
    return "\n".join(lines)


def plot(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], sweep: Mapping[str, Mapping[str, Any]],
         refs: Mapping[str, Mapping[str, float]], out: Path, select: str = "select metric",
         summary_runs: Mapping[str, Mapping[int, Mapping[str, float]]] | None = None) -> Path:
    """One panel per metric: every seed's value (light), the arm's mean ± std, the
    references' values (base, shared stages) and chance as lines; then one panel of the
    sweep's select metric against the learning rate; then every run's translation
    similarity against its Chinese NLL increase (``summary_runs``: the per-seed runs)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    summary_runs = summary_runs or {}
    arms = list(summary)
    cols = _columns(summary)
    # every run (sweep and seeds) as a point of quality against tax: the trade-off itself
    trade = ("alignment_tax/nll_increase_mean", "translation/similarity")
    points: dict[str, list[tuple[float, float]]] = {}
    for arm in arms:  # the sweep's run at the best rate is also a seed's run: once
        runs = list(sweep.get(arm, {}).values()) + list(summary_runs.get(arm, {}).values())
        points[arm] = sorted({(r[trade[0]], r[trade[1]]) for r in runs if trade[0] in r and trade[1] in r})
    n = len(cols) + (1 if sweep else 0) + (1 if any(points.values()) else 0)
    ncols = min(n, 4)
    fig, axes = plt.subplots(math.ceil(n / ncols), ncols, figsize=(3.2 * ncols, 2.6 * math.ceil(n / ncols)),
                             squeeze=False)
    for ax, (key, label, higher, chance) in zip(axes.flat, cols):
        for i, arm in enumerate(arms):
            s = summary[arm][key]
            ax.scatter([i] * len(s["values"]), s["values"], color=f"C{i}", alpha=0.35, s=14)
            ax.errorbar([i], [s["mean"]], yerr=[s["std"]], color=f"C{i}", marker="o", capsize=4, lw=1.5)
        if chance is not None:
            ax.axhline(chance, ls="--", lw=0.8, color="grey")
            ax.text(-0.4, chance, "chance", fontsize=7, color="grey", va="bottom")
        for j, (point, ms) in enumerate(refs.items()):
            if ms.get(key) is not None:
                ax.axhline(ms[key], ls=(":", "-.")[j % 2], lw=1.0, color="black")
                # alternate sides: the references are often close (base and its retext)
                ax.text(len(arms) - 0.5 if j % 2 else -0.45, ms[key], f" {point} ", fontsize=7, va="top",
                        ha="right" if j % 2 else "left")
        if "increase" in key or "kl" in key:
            ax.axhline(0.0, lw=0.6, color="grey")
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels(arms, fontsize=8)
        ax.set_xlim(-0.5, len(arms) - 0.5)
        ax.set_title(f"{label} {'↑' if higher else '↓'}", fontsize=9)
        ax.grid(alpha=0.3)
    if sweep:
        ax = list(axes.flat)[len(cols)]
        for i, (arm, rows) in enumerate(sweep.items()):
            pts = sorted((float(lr), m.get("_select")) for lr, m in rows.items() if m.get("_select") is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", color=f"C{arms.index(arm) if arm in arms else i}", label=arm)
        ax.set_xscale("log")
        ax.set_title(f"sweep: {select} vs lr", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if any(points.values()):
        ax = list(axes.flat)[n - 1]
        for i, arm in enumerate(arms):
            if points[arm]:
                ax.scatter(*zip(*points[arm]), color=f"C{i}", s=16, label=arm)
        ax.set_xlabel("zh NLL increase mean (tax) ↓", fontsize=8)
        ax.set_ylabel("similarity ↑", fontsize=8)
        ax.set_title("every run: quality vs tax", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise ConfigError(f"{what} {v!r}: use NAME=VALUE,VALUE")
        k, rest = v.split("=", 1)
        out[k.strip()] = rest
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftib.evals.tax_study", description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", type=Path, help="the study's recipe (both arms), e.g. configs/tax-study.yaml")
    p.add_argument("--out", type=Path, required=True, help="study folder (runs, recipes, logs, report)")
    p.add_argument("--arm", action="append", default=[], metavar="NAME=STAGE,STAGE",
                   help="an arm and its stages (default: sft=strong and grpo=cold,grpo)")
    p.add_argument("--sweep", action="append", default=[], metavar="ARM=LR,LR",
                   help="learning rates of the arm's last stage to sweep (none: the recipe's own)")
    p.add_argument("--only", nargs="+", metavar="ARM",
                   help="run these arms only (the others' stages are still left out of their runs)")
    p.add_argument("--sweep-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--select", default="translation/similarity",
                   help="<evaluator id>/<metric> that picks the best rate (higher is better)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="a recipe override for every run, as ftib run's (e.g. stages.strong.train.max_steps=200)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time; each gets OMP_NUM_THREADS = cores // jobs unless the variable is set "
                        "(the thread count changes reduction orders: compare runs made with the same)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from ftib.core.recipe import apply_overrides, read_yaml

    try:
        if args.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
        raw = apply_overrides(read_yaml(args.recipe), args.overrides)
        arms = ({k: tuple(x.strip() for x in v.split(",") if x.strip()) for k, v in _pairs(args.arm, "--arm").items()}
                or dict(DEFAULT_ARMS))
        for a, ss in arms.items():
            if not ss:
                raise ConfigError(f"--arm {a}: name its stages, e.g. --arm {a}=cold,grpo")
        sweeps: dict[str, list[float]] = {}
        for k, v in _pairs(args.sweep, "--sweep").items():
            try:
                sweeps[k] = [float(x) for x in v.split(",") if x.strip()]
            except ValueError:
                raise ConfigError(f"--sweep {k}={v}: the learning rates must be numbers, e.g. {k}=1e-4,3e-4") from None
            if not sweeps[k] or any(not lr > 0 for lr in sweeps[k]):
                raise ConfigError(f"--sweep {k}={v}: give one or more learning rates > 0")
        for a in sweeps:
            if a not in arms:
                raise ConfigError(f"--sweep {a}: no such arm; {did_you_mean(a, arms)}")
        for a in arms:
            arm_recipe(raw, arms, a, None, 0)  # a stage name typo stops the study before any run
        for a in args.only or []:
            if a not in arms:
                raise ConfigError(f"--only {a}: no such arm; {did_you_mean(a, arms)}")
        run_arms = {a: arms[a] for a in (args.only or arms)}
        out = args.out
        threads = None if "OMP_NUM_THREADS" in os.environ or args.jobs == 1 else max(1, (os.cpu_count() or 1)
                                                                                      // args.jobs)

        def run_all(jobs: list[tuple[str, float | None, int]]) -> list[dict[str, float]]:
            from concurrent.futures import ThreadPoolExecutor

            def one(job: tuple[str, float | None, int]) -> dict[str, float]:
                arm, lr, seed = job
                return collect_arm(run_one(out, raw, arms, arm, lr, seed, not args.no_progress, threads), arms, arm)

            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                return list(pool.map(one, jobs))

        sweep: dict[str, dict[str, dict[str, float]]] = {}
        best: dict[str, float | None] = {a: None for a in run_arms}
        jobs: list[tuple[str, float | None, int]] = [(a, lr, args.sweep_seed) for a in run_arms
                                                     for lr in sweeps.get(a, [])]
        for (arm, lr, _seed), m in zip(jobs, run_all(jobs)):
            if args.select not in m:
                raise ConfigError(f"--select {args.select}: run {_run_name(arm, lr, args.sweep_seed)} has no such "
                                  f"metric at stage {arms[arm][-1]!r}; it has: {', '.join(sorted(m)[:12])}")
            sweep.setdefault(arm, {})[repr(lr)] = {**m, "_select": m[args.select]}
        for arm, lrs in sweeps.items():
            if arm in run_arms:
                best[arm] = max(lrs, key=lambda lr: sweep[arm][repr(lr)]["_select"])
        jobs = [(a, best[a], s) for a in run_arms for s in args.seeds]
        per_seed: dict[str, dict[int, dict[str, float]]] = {a: {} for a in run_arms}
        for (arm, _lr, seed), m in zip(jobs, run_all(jobs)):
            per_seed[arm][seed] = m
        summary = summarise(per_seed)
        from ftib.core.rundir import atomic_write_json, atomic_write_text

        atomic_write_json(out / "sweep.json", {"select": args.select, "best": best, "runs": sweep})
        atomic_write_json(out / "results.json", {"recipe": str(args.recipe), "overrides": args.overrides,
                                                 "arms": run_arms, "best_lr": best,
                                                 "seeds": args.seeds, "per_seed": per_seed, "summary": summary})
        atomic_write_text(out / "report.md", markdown(args.recipe, run_arms, sweep, best, summary, per_seed,
                                                      args.select, args.overrides)
                          + "\n![tax study](tax_study.png)\n")
        plot(summary, sweep, references(per_seed), out / "tax_study.png", args.select, per_seed)
        print(f"[tax-study] wrote {out / 'report.md'} and {out / 'tax_study.png'}", file=sys.stderr)
        return 0
    except (FtibError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
