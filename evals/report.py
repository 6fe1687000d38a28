"""Reports: a Markdown table of scores and a PNG of scores per stage.

Input is a mapping ``point -> benchmark id -> {"name", "metrics"}`` where a point is
``base`` or a stage id, in run order. :func:`collect_run` builds it from a pipeline run
directory (``manifest.json``); :func:`collect_eval_dir` from the ``eval/`` folder that
``ftib eval`` writes. :func:`write_report` writes ``report.md`` and, when more than one
point was evaluated, ``scores_by_stage.png`` (matplotlib, Agg backend).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftib.core.errors import FtibError
from ftib.core.rundir import atomic_write_text

__all__ = ["PRIMARY", "collect_eval_dir", "collect_run", "markdown", "plot_stages", "write_report"]

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


def plot_stages(results: Results, out: Path) -> Path:
    """One panel per benchmark: its primary metric at each evaluated point."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    points = list(results)
    benches = list(dict.fromkeys(b for p in points for b in results[p]))
    n = len(benches)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, b in zip(axes.flat, benches):
        name = next(results[p][b]["name"] for p in points if b in results[p])
        metrics0 = next(results[p][b]["metrics"] for p in points if b in results[p])
        key = _primary(name, metrics0)
        xs = [i for i, p in enumerate(points) if key in results[p].get(b, {}).get("metrics", {})]
        ys = [results[points[i]][b]["metrics"][key] for i in xs]
        ax.plot(xs, ys, marker="o")
        ax.set_title(f"{b}: {key}", fontsize=9)
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
