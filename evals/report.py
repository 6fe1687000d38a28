"""Reports: a Markdown table of scores and a PNG of scores per stage.

Input is a mapping ``point -> benchmark id -> {"name", "metrics"}`` where a point is
``base`` or a stage id, in run order. :func:`collect_run` builds it from a pipeline run
directory (``manifest.json``); :func:`collect_eval_dir` from the ``eval/`` folder that
``ftib eval`` writes. :func:`write_report` writes ``report.md`` and, when more than one
point was evaluated, ``scores_by_stage.png`` (matplotlib, Agg backend).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ftib.core.errors import FtibError, did_you_mean
from ftib.core.rundir import atomic_write_text, iter_jsonl

log = logging.getLogger(__name__)

__all__ = ["CHANCE", "PRIMARY", "collect_eval_dir", "collect_run", "markdown", "plot_stages", "plot_training",
           "run_markdown", "write_report", "write_run_report"]

#: The headline metric of each built-in evaluator and whether higher is better.
PRIMARY: dict[str, tuple[str, bool]] = {
    "mmbench": ("circular", True),
    "mme": ("total", True),
    "pope": ("f1", True),
    "binary_vqa": ("balanced_accuracy", True),
    "corevqa": ("accuracy", True),
    "translation": ("chrf", True),
    "headline": ("rouge_l", True),
    "alignment_tax": ("nll_increase_mean", False),
}
#: Further columns shown in the summary table when present.
SECONDARY: dict[str, tuple[str, ...]] = {
    "mmbench": ("vanilla", "unparsed_ratio"),
    "mme": ("perception", "cognition", "unparsed_ratio"),
    "pope": ("accuracy", "yes_ratio", "unparsed_ratio"),
    "binary_vqa": ("accuracy", "unparsed_ratio"),
    "corevqa": ("balanced_accuracy", "unparsed_ratio"),
    "translation": ("bleu", "similarity"),
    "headline": ("similarity",),
    "alignment_tax": ("nll_increase_p90", "kl_mean"),
}

Results = dict[str, dict[str, dict[str, Any]]]

#: Score of a model answering at random (uniformly over the valid answers) for the
#: metrics the learning check compares against: yes/no and true/false benchmarks 0.5;
#: MMBench 4-option questions 0.25 per row, all four rotations right (CircularEval)
#: 0.25**4; MME per subtask acc 50 + acc+ 25 = 75, so perception is 75 x its subtasks.
CHANCE: dict[tuple[str, str], float] = {
    ("pope", "accuracy"): 0.5,
    ("binary_vqa", "accuracy"): 0.5,
    ("binary_vqa", "balanced_accuracy"): 0.5,
    ("corevqa", "accuracy"): 0.5,
    ("mmbench", "circular"): 0.25 ** 4,
    ("mmbench", "vanilla"): 0.25,
}
#: The multimodal benchmarks and the metrics the learning check reports.
LEARNING_METRICS: dict[str, tuple[str, ...]] = {
    "pope": ("random/accuracy", "popular/accuracy", "adversarial/accuracy", "yes_ratio"),
    "mmbench": ("circular", "vanilla"),
    "mme": ("perception",),
    "binary_vqa": ("accuracy", "balanced_accuracy"),
    "corevqa": ("accuracy",),
}


def collect_run(run_dir: Path) -> Results:
    """Evaluation results of a pipeline run, points in run order."""
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        raise FtibError(f"{run_dir} has no manifest.json (not an ftib run directory)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    stage_order = ["base", *manifest.get("stages", {}).keys()]
    out: Results = {}
    for key, rec in manifest.get("evals", {}).items():
        if rec.get("status") != "completed":
            continue
        point, ev_id = key.split("/", 1)
        out.setdefault(point, {})[ev_id] = {"name": rec.get("name", ev_id), "metrics": rec.get("metrics", {})}
    return {p: out[p] for p in sorted(out, key=lambda p: stage_order.index(p) if p in stage_order else 1e9)}


def collect_eval_dir(eval_dir: Path, point: str = "model") -> Results:
    """Results written by ``ftib eval`` (``<bench>.json`` files) as one point."""
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(Path(eval_dir).glob("*.json")):
        doc = json.loads(f.read_text(encoding="utf-8"))
        if "metrics" in doc:
            out[f.stem] = {"name": doc.get("evaluator", f.stem), "metrics": doc["metrics"]}
    if not out:
        raise FtibError(f"{eval_dir} holds no <bench>.json results")
    return {point: out}


def _fmt(v: Any) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if math.isnan(v):
            return "–"
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return "–" if v is None else str(v)


def _primary(name: str, metrics: Mapping[str, Any]) -> str:
    if name in PRIMARY:
        return PRIMARY[name][0]
    return next(iter(metrics), "")


def markdown(results: Results, title: str = "FTibBench results") -> str:
    """A summary table (one row per benchmark, one column per point), then per point the
    benchmark's main metrics and the share of answers per extraction rule."""
    points = list(results)
    benches = list(dict.fromkeys(b for p in points for b in results[p]))
    lines = [f"# {title}", ""]
    lines += ["| benchmark | metric | " + " | ".join(points) + " |",
              "|---|---|" + "---|" * len(points)]
    for b in benches:
        name = next(results[p][b]["name"] for p in points if b in results[p])
        metrics0 = next(results[p][b]["metrics"] for p in points if b in results[p])
        key = _primary(name, metrics0)
        arrow = "" if name not in PRIMARY else (" ↑" if PRIMARY[name][1] else " ↓")
        cells = [_fmt(results[p].get(b, {}).get("metrics", {}).get(key)) for p in points]
        lines.append(f"| {b} | {key}{arrow} | " + " | ".join(cells) + " |")
    for p in points:
        lines += ["", f"## {p}", ""]
        for b, res in results[p].items():
            m = res["metrics"]
            keys = [_primary(res["name"], m), *SECONDARY.get(res["name"], ())]
            shown = ", ".join(f"{k} {_fmt(m[k])}" for k in keys if k in m)
            rules = {k[5:]: v for k, v in m.items() if k.startswith("rule/")}
            rule_txt = ""
            if rules:
                rule_txt = "; parsed by " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in rules.items())
            lines.append(f"- **{b}**: {shown}{rule_txt}")
    return "\n".join(lines) + "\n"


#: The score plot's metric where it is not the summary's primary one: the metric whose
#: chance and targets are stated (POPE's accuracy, 50 % by chance; MME's perception sum).
PANEL_METRIC: dict[str, str] = {"pope": "accuracy", "mme": "perception", "binary_vqa": "accuracy"}


def score_panels(results: Results) -> list[tuple[str, str, list[str]]]:
    """The score plot's panels: ``(evaluator name, metric, evaluation ids)``, one per
    evaluator and metric, so that the same benchmark in two languages (``pope`` and
    ``pope_zh``, say) shares a panel, Tibetan and Chinese side by side."""
    points = list(results)
    benches = list(dict.fromkeys(b for p in points for b in results[p]))
    panels: dict[tuple[str, str], list[str]] = {}
    for b in benches:
        name = next(results[p][b]["name"] for p in points if b in results[p])
        metrics0 = next(results[p][b]["metrics"] for p in points if b in results[p])
        key = PANEL_METRIC.get(name, "")
        if key not in metrics0:
            key = _primary(name, metrics0)
        panels.setdefault((name, key), []).append(b)
    return [(name, key, ids) for (name, key), ids in panels.items()]


def panel_targets(key: str, ids: list[str], targets: Mapping[str, Mapping[str, float]]) -> list[tuple[str, float]]:
    """The target lines of a panel showing ``key``: ``(evaluation id, value)`` for each
    distinct target its evaluations set on ``key`` itself or on a split of it
    (``random/accuracy`` on an ``accuracy`` panel)."""
    out: list[tuple[str, float]] = []
    for b in ids:
        values = [v for m, v in (targets.get(b) or {}).items() if m == key or m.endswith("/" + key)]
        out += [(b, v) for v in dict.fromkeys(values)]
    return out


def plot_stages(results: Results, out: Path, targets: Mapping[str, Mapping[str, float]] | None = None) -> Path:
    """One panel per benchmark (:func:`score_panels`): its metric at each evaluated
    point, one line per evaluation of it (Tibetan and Chinese together), chance as a grey
    dashed line and each evaluation's ``target`` (the recipe's, ``{eval id: {metric:
    value}}``) as a dotted line in its colour."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    points = list(results)
    panels = score_panels(results)
    n = len(panels)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, (name, key, ids) in zip(axes.flat, panels):
        colours = {}
        for b in ids:
            xs = [i for i, p in enumerate(points) if key in results[p].get(b, {}).get("metrics", {})]
            ys = [results[points[i]][b]["metrics"][key] for i in xs]
            (line,) = ax.plot(xs, ys, marker="o", label=b)
            colours[b] = line.get_color()
        metrics0 = next(results[p][b]["metrics"] for b in ids for p in points if b in results[p])
        chance = _chance(name, key, metrics0)
        if chance is not None:
            ax.axhline(chance, ls="--", lw=0.8, color="grey")
            ax.text(0, chance, " chance", fontsize=7, color="grey", va="bottom")
        for b, value in panel_targets(key, ids, targets or {}):
            ax.axhline(value, ls=":", lw=1.2, color=colours[b])
            ax.text(len(points) - 1, value, f"target{f' ({b})' if len(ids) > 1 else ''} ", fontsize=7,
                    color=colours[b], va="bottom", ha="right")
        if len(ids) > 1:
            ax.legend(fontsize=6, loc="best")
        ax.set_title(f"{name}: {key}" if len(ids) > 1 else f"{ids[0]}: {key}", fontsize=9)
        ax.set_xticks(range(len(points)))
        ax.set_xticklabels(points, rotation=30, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(results: Results, out_dir: Path, title: str = "FTibBench results") -> dict[str, Path]:
    """Write ``report.md`` (and ``scores_by_stage.png`` for several points) to ``out_dir``."""
    if not results:
        raise FtibError("no completed evaluations to report")
    out_dir = Path(out_dir)
    written = {"markdown": out_dir / "report.md"}
    text = markdown(results, title)
    if len(results) > 1:
        written["plot"] = plot_stages(results, out_dir / "scores_by_stage.png")
        text += "\n![scores by stage](scores_by_stage.png)\n"
    atomic_write_text(written["markdown"], text)
    return written


# ------------------------------------------------------------------ run reports


def _chance(name: str, key: str, metrics: Mapping[str, Any]) -> float | None:
    base = key.split("/")[-1]
    if name == "mme" and key == "perception":
        n = sum(1 for k in metrics if k.endswith("/score") and k.split("/")[0] not in _mme_cognition())
        return 75.0 * n if n else None
    if name == "pope" and base == "accuracy":
        return 0.5
    if f"chance/{key}" in metrics:  # per-question chance the evaluator computed (MMBench)
        return float(metrics[f"chance/{key}"])
    return CHANCE.get((name, key))


def unmatched_targets(results: Results, targets: Mapping[str, Mapping[str, float]]) -> list[str]:
    """One line per ``target`` that names a metric its evaluation never reported (a typo
    would otherwise draw and check nothing), with the metrics it does report."""
    out = []
    for b, goals in targets.items():
        have = dict.fromkeys(k for p in results for k in (results[p].get(b) or {}).get("metrics", {}))
        if not have:
            continue  # not evaluated (yet): nothing to say about its metrics
        for key in goals:
            if key not in have:
                shown = ", ".join(k for k in have if not k.startswith(("rule/", "time", "chance/")))
                out.append(f"evaluators.{b}.target.{key}: {b} reports no metric {key!r} "
                           f"({did_you_mean(key, list(have))}); its metrics: {shown}")
    return out


def run_targets(manifest: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{evaluator id: {metric: value}}``: the ``target`` of each evaluator entry of the
    recipe the run last ran (its manifest's ``config``)."""
    return {e["id"]: dict(e["target"]) for e in (manifest.get("config") or {}).get("evaluators") or []
            if isinstance(e, Mapping) and e.get("target")}


def _mme_cognition() -> tuple[str, ...]:
    from ftib.evals.metrics import MME_COGNITION

    return MME_COGNITION


def _manifest(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        raise FtibError(f"{run_dir} has no manifest.json (not an ftib run directory)")
    return json.loads(path.read_text(encoding="utf-8"))


def _training_rows(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Per-step rows of ``metrics.jsonl`` grouped by stage (a corrupt line is an error)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows: dict[str, list[dict[str, Any]]] = {}
    if not path.is_file():
        return rows
    for _, rec in iter_jsonl(path):
        if isinstance(rec, dict) and "stage" in rec and "step" in rec:
            rows.setdefault(rec["stage"], []).append(rec)
    return rows


def _stage_table(manifest: Mapping[str, Any]) -> list[str]:
    lines = ["| stage | seconds | steps | loss (first 10% → last 10%) | other |", "|---|---:|---:|---|---|"]
    for sid, rec in manifest.get("stages", {}).items():
        m = rec.get("metrics") or {}
        loss = (f"{_fmt(m.get('loss_first_10pct'))} → {_fmt(m.get('loss_last_10pct'))}"
                if "loss_first_10pct" in m else "–")
        other = []
        if "reward_first_20pct" in m:
            other.append(f"reward (first 20% → last 20%) {_fmt(m['reward_first_20pct'])} → "
                         f"{_fmt(m.get('reward_last_20pct'))}")
        if "grounding_gap" in m:
            before = f"{_fmt(m['grounding_gap_before'])} → " if "grounding_gap_before" in m else ""
            other.append(f"image-grounding gap {before}{_fmt(m['grounding_gap'])}")
        alarms = {k[len("monitor_"):-len("_alarm_steps")]: v for k, v in m.items()
                  if k.startswith("monitor_") and k.endswith("_alarm_steps") and v}
        if alarms:  # GRPO monitors (ftib.stages.grpo_monitors): steps over threshold
            other.append("monitor alarms (steps) " + ", ".join(f"{k} {_fmt(v)}" for k, v in alarms.items()))
        if "monitor_stop_step" in m:
            other.append(f"stopped by a monitor after step {_fmt(m['monitor_stop_step'])}")
        if "select/step" in m:  # GRPO checkpoint selection (ftib.stages.grpo_select)
            if m.get("select/none_within_budget"):
                other.append(f"no checkpoint within the tax budget {_fmt(m.get('select/max_tax'))}: output = "
                             "starting weights")
            else:
                other.append(f"selected step {_fmt(m['select/step'])} (similarity {_fmt(m.get('select/similarity'))}"
                             f", tax {_fmt(m.get('select/tax'))} ≤ {_fmt(m.get('select/max_tax'))})")
        for k in ("tokens_per_s", "trainable_params"):
            if k in m:
                other.append(f"{k.replace('_', ' ')} {_fmt(m[k])}")
        lines.append(f"| {sid} | {_fmt(rec.get('seconds'))} | {_fmt(m.get('steps'))} | {loss} | "
                     f"{'; '.join(other) or '–'} |")
    return lines


def _learning_table(results: Results, targets: Mapping[str, Mapping[str, float]] | None = None) -> list[str]:
    """Each multimodal benchmark's metrics at every point that evaluated one, next to
    chance and the recipe's target (a score that meets it is marked ✓)."""
    points = [p for p in results if any(r["name"] in LEARNING_METRICS for r in results[p].values())]
    benches = list(dict.fromkeys(b for p in points for b, r in results[p].items() if r["name"] in LEARNING_METRICS))
    if not benches:
        return []
    targets = targets or {}
    lines = ["| benchmark | metric | chance | target | " + " | ".join(points) + " |",
             "|---|---|---:|---:|" + "---:|" * len(points)]
    for b in benches:
        name = next(results[p][b]["name"] for p in points if b in results[p])
        m0 = next(results[p][b]["metrics"] for p in points if b in results[p])
        own = targets.get(b) or {}
        for key in [*LEARNING_METRICS[name], *(k for k in own if k not in LEARNING_METRICS[name])]:
            if key not in m0:
                continue
            chance = _chance(name, key, m0)
            goal = own.get(key)

            def cell(p: str) -> str:
                v = results[p].get(b, {}).get("metrics", {}).get(key)
                return _fmt(v) + (" ✓" if goal is not None and v is not None and v >= goal else "")

            lines.append(f"| {b} | {key} | {'–' if chance is None else _fmt(chance)} | "
                         f"{'–' if goal is None else '≥ ' + _fmt(goal)} | " + " | ".join(cell(p) for p in points) + " |")
    return lines


def _tax_table(manifest: Mapping[str, Any], results: Results) -> list[str]:
    """Translation quality and alignment tax side by side for every point that has an
    ``alignment_tax`` result (the seed's SFT-vs-GRPO comparison)."""
    taxed = [p for p in results if any(r["name"] == "alignment_tax" for r in results[p].values())]
    if not taxed:
        return []
    lines = ["| point | stage seconds | similarity ↑ | BLEU ↑ | chrF ↑ | NLL increase mean ↓ | "
             "NLL increase p90 ↓ | KL mean ↓ |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in taxed:
        tr = next((r["metrics"] for r in results[p].values() if r["name"] == "translation"), {})
        tax = next(r["metrics"] for r in results[p].values() if r["name"] == "alignment_tax")
        secs = manifest.get("stages", {}).get(p, {}).get("seconds")
        lines.append(f"| {p} | {_fmt(secs)} | {_fmt(tr.get('similarity'))} | {_fmt(tr.get('bleu'))} | "
                     f"{_fmt(tr.get('chrf'))} | {_fmt(tax.get('nll_increase_mean'))} | "
                     f"{_fmt(tax.get('nll_increase_p90'))} | {_fmt(tax.get('kl_mean'))} |")
    base = next((e.get("config", {}).get("base_model") for e in manifest.get("config", {}).get("evaluators", [])
                 if e.get("name") == "alignment_tax"), None)
    if base:
        lines += ["", f"The alignment tax is measured against `{base}`."]
    return lines


def _selection_table(run_dir: Path, manifest: Mapping[str, Any]) -> list[str]:
    """Each GRPO stage's checkpoint-selection curve (its ``selection.json``): every
    evaluation's metric and tax, whether it was within budget, and the choice."""
    lines: list[str] = []
    for sid in manifest.get("stages", {}):
        path = Path(run_dir) / "stages" / sid / "selection.json"
        if not path.is_file():
            continue
        sel = json.loads(path.read_text(encoding="utf-8"))
        chosen = sel.get("chosen_step")
        lines += ["", f"`{sid}`: {sel.get('metric')} under {sel.get('tax_metric')} ≤ {_fmt(sel.get('max_tax'))}, "
                  f"every {sel.get('every')} steps; starting similarity {_fmt(sel.get('similarity_start'))}; "
                  + (f"output: step {chosen}." if chosen is not None
                     else "no evaluation within budget: output = the starting weights."), "",
                  "| step | similarity ↑ | tax ↓ | within budget | chosen |", "|---:|---:|---:|---|---|"]
        for c in sel.get("curve", []):
            lines.append(f"| {c['step']} | {_fmt(c['similarity'])} | {_fmt(c['tax'])} | "
                         f"{'yes' if c['within_budget'] else 'no'} | {'✓' if c['step'] == chosen else ''} |")
    return lines


def run_markdown(run_dir: Path) -> str:
    """The report of a pipeline run: stages, benchmark scores, the learning check against
    chance, the alignment-tax comparison when present, and the machine it ran on."""
    run_dir = Path(run_dir)
    manifest = _manifest(run_dir)
    results = collect_run(run_dir)
    title = f"ftib run report: {run_dir.name}"
    lines = [f"# {title}", ""]
    recipe = manifest.get("recipe_file")
    platform = manifest.get("platform", {})
    native = manifest.get("native") or {}
    versions = manifest.get("versions", {})
    lines += [f"- recipe: `{recipe}`" if recipe else "- recipe: (built in code)",
              f"- status: {manifest.get('status', '?')}; last invocation "
              f"{_fmt(manifest.get('last_invocation_seconds'))} s wall",
              f"- machine: {platform.get('system', '?')}, {native.get('hardware_threads', '?')} hardware threads; "
              f"torch {versions.get('torch', '?')}, transformers {versions.get('transformers', '?')}",
              f"- git commit: {manifest.get('git_commit') or '?'}"]
    if manifest.get("recomputed"):  # entries whose configuration changed since the last run
        lines.append(f"- recomputed (configuration changed): {', '.join(manifest['recomputed'])}")
    lines += ["", "## Stages", ""]
    lines += _stage_table(manifest)
    learning = _learning_table(results, run_targets(manifest))
    if learning:
        lines += ["", "## Learning on FTibBench-mini", "",
                  "Scores at each evaluated point next to a random guesser's (chance) and the "
                  "recipe's target (✓: met). `base` is the untrained model; an unparsed answer counts "
                  "as wrong.", ""] + learning
    unmatched = unmatched_targets(results, run_targets(manifest))
    for line in unmatched:
        log.warning("run report: %s", line)
    if unmatched:
        lines += [""] + [f"- **target not checked**: {line}" for line in unmatched]
    tax = _tax_table(manifest, results)
    if tax:
        lines += ["", "## Alignment tax", ""] + tax
    selection = _selection_table(run_dir, manifest)
    if selection:
        lines += ["", "## Checkpoint selection"] + selection
    if results:
        body = markdown(results, "Benchmarks").split("\n", 1)[1]
        lines += ["", "## Benchmarks", body.rstrip()]
    return "\n".join(lines) + "\n"


# The GRPO monitors' curves (metrics.jsonl keys) and the alarm each one's steps are
# flagged by (``monitor/<alarm>_alarm``); see ftib.stages.grpo_monitors.
MONITOR_CURVES = {
    "monitor/mixed_language_share": "mixed_language", "monitor/length_ratio": "length",
    "monitor/heldout_similarity": "heldout", "monitor/entropy_ratio": "entropy", "kl": "kl",
    "zero_std_groups": "zero_std", "clip_ratio_region": "clip", "cispo_clip_ratio": "clip",
}


# The checkpoint selection's curves (ftib.stages.grpo_select); over-budget evaluations
# (``select/within_budget`` 0) are marked.
SELECT_CURVES = ("select/similarity", "select/tax")


#: Curves with at least this many points are drawn smoothed (raw in light).
SMOOTH_MIN_POINTS = 20


def smoothing_span(n: int) -> int:
    """The EMA span for a curve of ``n`` points: a twentieth of it, at least 5."""
    return max(5, n // 20)


def smooth(values: Sequence[float], span: int | None = None) -> list[float]:
    """Bias-corrected exponential moving average (alpha = 2 / (span + 1), as pandas'
    ``ewm(span=..., adjust=True)``): the first points are not pulled towards 0."""
    span = smoothing_span(len(values)) if span is None else span
    alpha = 2.0 / (span + 1.0)
    out, num, den = [], 0.0, 0.0
    for v in values:
        num = (1.0 - alpha) * num + v
        den = (1.0 - alpha) * den + 1.0
        out.append(num / den)
    return out


def plot_training(run_dir: Path, out: Path) -> Path | None:
    """Loss of every stage per step (and GRPO's mean reward and monitor curves, alarm
    steps marked) from ``metrics.jsonl``."""
    rows = _training_rows(run_dir)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    panels = [(stage, "loss") for stage in rows] + [
        (stage, "reward_mean") for stage, rs in rows.items() if any("reward_mean" in r for r in rs)]
    # GRPO monitor curves, for stages that logged monitors, with their alarm steps marked.
    panels += [(stage, key) for stage, rs in rows.items() if any("monitor/alarms" in r for r in rs)
               for key in MONITOR_CURVES if any(key in r for r in rs)]
    # GRPO checkpoint selection: the metric and tax curves, over-budget evaluations marked.
    panels += [(stage, key) for stage, rs in rows.items() for key in SELECT_CURVES if any(key in r for r in rs)]
    cols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.4 * nrows), squeeze=False)
    for ax, (stage, key) in zip(axes.flat, panels):
        pts = [(r["step"], r[key]) for r in rows[stage] if isinstance(r.get(key), (int, float))]
        if len(pts) >= SMOOTH_MIN_POINTS:
            # raw per-step values in light, their running mean on top (a GRPO reward is
            # noise step to step; the trend is what the panel is for)
            xs, ys = zip(*pts)
            ax.plot(xs, ys, lw=0.6, alpha=0.3, color="C0", label="per step")
            ax.plot(xs, smooth(ys), lw=1.4, color="C0", label=f"EMA, span {smoothing_span(len(ys))}")
            ax.legend(fontsize=6, loc="best")
        elif pts:
            ax.plot(*zip(*pts), lw=1, marker="." if len(pts) < 3 else None)
        alarm = MONITOR_CURVES.get(key)
        hits = [(r["step"], r[key]) for r in rows[stage]
                if alarm and r.get(f"monitor/{alarm}_alarm") == 1.0 and isinstance(r.get(key), (int, float))]
        if key in SELECT_CURVES:
            hits = [(r["step"], r[key]) for r in rows[stage]
                    if r.get("select/within_budget") == 0.0 and isinstance(r.get(key), (int, float))]
        if hits:
            ax.scatter(*zip(*hits), color="red", marker="x", s=16, zorder=3, label="alarm")
        ax.set_title(f"{stage}: {key}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_run_report(run_dir: Path) -> dict[str, Path]:
    """Write ``report.md``, ``scores_by_stage.png`` (several evaluated points) and
    ``training_curves.png`` into the run directory; returns what was written."""
    run_dir = Path(run_dir)
    text = run_markdown(run_dir)
    written: dict[str, Path] = {"markdown": run_dir / "report.md"}
    results = collect_run(run_dir)
    if len(results) > 1:
        written["plot"] = plot_stages(results, run_dir / "scores_by_stage.png", targets=run_targets(_manifest(run_dir)))
        text += "\n![scores by stage](scores_by_stage.png)\n"
    curves = plot_training(run_dir, run_dir / "training_curves.png")
    if curves is not None:
        written["training_plot"] = curves
        text += "\n![training curves](training_curves.png)\n"
    atomic_write_text(written["markdown"], text)
    return written
