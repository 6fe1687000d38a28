"""The report of ``ftib data clean``: ``report.json``, ``report.md``, ``lengths.png``.

Written by the pipeline's last stage (:class:`WriteReport`, one task) from datatrove's
per-task stats (``_logs/<stage>/stats/*.json``, merged here so that a resumed run
counts the tasks of earlier invocations too) and the side files of the Tibetan blocks
(examples, read problems, kept-document stats).
"""

from __future__ import annotations

import gzip
import itertools
import json
from collections import Counter
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from ftib.core.errors import FtibError
from ftib.data.clean.config import CleanConfig

#: Read problems listed in report.md (all of them are in report.json).
MAX_PROBLEMS_SHOWN = 20


def merged_stats(stage_dir: Path) -> dict[str, dict[str, float]]:
    """``{step name: {stat: total over tasks}}`` from ``stage_dir/stats/*.json``."""
    merged: dict[str, Counter] = {}
    for f in sorted((stage_dir / "stats").glob("*.json")):
        for step in json.loads(f.read_text(encoding="utf-8")):
            acc = merged.setdefault(step["name"], Counter())
            for key, value in step.get("stats", {}).items():
                acc[key] += value["total"] if isinstance(value, dict) else value
    return {name: dict(c) for name, c in merged.items()}


def _read_side(folder: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        out.extend(json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line)
    return out


def _iter_excluded(folder: Path) -> Iterator[dict[str, Any]]:
    for f in sorted(folder.glob("*.jsonl.gz")) if folder.is_dir() else []:
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)


def _first_excluded(folder: Path, n: int) -> list[dict[str, Any]]:
    return list(itertools.islice(_iter_excluded(folder), n))


def _step(stats: dict[str, dict[str, float]], suffix: str) -> dict[str, float]:
    """Sum of the steps whose name ends with ``suffix`` (a stage may hold several)."""
    acc: Counter = Counter()
    for name, s in stats.items():
        if name.endswith(suffix):
            acc.update(s)
    return dict(acc)


def build_report(out: Path, cfg: CleanConfig) -> dict[str, Any]:
    """Collect every count of a finished run into one JSON-ready dict."""
    from ftib.data.clean.rules import ALL_RULES

    logs, side = out / "_logs", out / "_work" / "side"
    stages = {d.name: merged_stats(d) for d in sorted(logs.iterdir()) if d.is_dir()} if logs.is_dir() else {}
    first = stages.get("filter", {})
    readers = Counter()
    for name, s in first.items():
        if "READER" in name:
            readers.update(s)
    repairs = Counter()
    for suffix in ("Tibetan repairs", "Tibetan normaliser"):
        repairs.update(_step(first, suffix))
    script = _step(first, "Tibetan script share")
    quality = _step(first, "syllable quality")
    write = stages.get("write", {})
    exact = _step(write, "exact-deduplication stage 3")
    near = _step(write, "MinHash stage 4")
    writer = {k: v for n, s in write.items() if "WRITER" in n for k, v in s.items()}
    kept = _read_side(side / "kept")
    examples = _read_side(side / "examples")
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for e in examples:
        by_rule.setdefault(e["rule"], [])
        if len(by_rule[e["rule"]]) < cfg.repairs.examples:
            by_rule[e["rule"]].append(e)
    rules = {r: {"enabled": getattr(cfg.repairs, r), "documents": int(repairs.get(f"{r}_docs", 0)),
                 "fixes": int(repairs.get(f"{r}_fixes", 0))} for r in ALL_RULES}
    rules = {"normalize": {"enabled": cfg.normalize, "documents": int(repairs.get("normalize_docs", 0)),
                           "fixes": int(repairs.get("normalize_docs", 0))}, **rules}
    near_clusters = Counter(k["near_cluster"] for k in kept if k["near_cluster"] > 1)
    exact_clusters = Counter(k["exact_cluster"] for k in kept if k["exact_cluster"] > 1)
    # An exact cluster's survivor may then go as a near-duplicate of another document;
    # its cluster still counts (datatrove's duplicate_count = removed copies).
    for rec in _iter_excluded(out / "excluded" / "near_duplicates"):
        dups = int(rec.get("metadata", {}).get("duplicate_count", 0))
        if dups > 0:
            exact_clusters[dups + 1] += 1
    pairs = []
    by_cluster = {k["cluster_id"]: k for k in kept if "cluster_id" in k}
    for rec in _first_excluded(out / "excluded" / "near_duplicates", cfg.repairs.examples):
        cid = rec.get("metadata", {}).get("minhash_cluster_id")
        if cid in by_cluster:
            pairs.append({"removed": rec["id"], "removed_text": rec["text"][:120], "kept": by_cluster[cid]["id"],
                          "kept_text": by_cluster[cid]["text"]})
    return {
        "tool": "ftib data clean",
        "read": {"input_files": int(readers.get("input_files", 0)), "documents": int(readers.get("documents", 0)),
                 "bad_utf8_lines": int(readers.get("bad_utf8_lines", 0)),
                 "bad_json_lines": int(readers.get("bad_json_lines", 0)),
                 "records_without_text": int(readers.get("records_without_text", 0)),
                 "unreadable_files": int(readers.get("unreadable_files", 0)),
                 "problems": _read_side(side / "problems")},
        "rules": rules,
        "script": {k: int(v) for k, v in script.items() if not k.startswith("doc_")},
        "quality": {k: int(v) for k, v in quality.items() if not k.startswith("doc_")},
        "exact_dedup": {"enabled": cfg.dedup.exact, "removed": int(exact.get("dropped", 0)),
                        "cluster_sizes": {str(k): v for k, v in sorted(exact_clusters.items())}},
        "near_dedup": {"enabled": cfg.minhash.enabled, "removed": int(near.get("dropped", 0)),
                       "shingle": cfg.minhash.shingle, "bands": cfg.minhash.bands, "rows": cfg.minhash.rows,
                       "threshold": cfg.minhash.threshold,
                       "effective_threshold": round(cfg.minhash.effective_threshold, 4),
                       "cluster_sizes": {str(k): v for k, v in sorted(near_clusters.items())}, "examples": pairs},
        "kept": {"documents": len(kept), "syllables": sum(k["syllables"] for k in kept),
                 "characters": int(writer.get("doc_len", 0))},
        "examples": by_rule,
    }


def _plot_lengths(lengths: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 3.2))
    if lengths:
        hi = max(lengths)
        bins = np.unique(np.geomspace(1, hi + 1, num=min(40, hi + 1)).astype(int)) if hi > 1 else [0, 1, 2]
        ax.hist(lengths, bins=bins, color="#8a3324")
        if hi > 50:
            ax.set_xscale("log")
    ax.set_xlabel("Tibetan syllables per kept document")
    ax.set_ylabel("documents")
    ax.set_title(f"{len(lengths)} documents")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _md(report: dict[str, Any]) -> str:
    r = report["read"]
    lines = ["# ftib data clean: report", "",
             f"Read {r['documents']} documents from {r['input_files']} files; kept "
             f"**{report['kept']['documents']}** ({report['kept']['syllables']} Tibetan syllables).", "",
             "## Reading", "",
             f"bad UTF-8 lines {r['bad_utf8_lines']}, bad JSON lines {r['bad_json_lines']}, records without text "
             f"{r['records_without_text']}, unreadable files {r['unreadable_files']}", ""]
    for p in r["problems"][:MAX_PROBLEMS_SHOWN]:
        lines.append(f"- `{p['file']}:{p['line']}` {p['kind']}: {p['detail']}")
    if len(r["problems"]) > MAX_PROBLEMS_SHOWN:
        lines.append(f"- ... {len(r['problems']) - MAX_PROBLEMS_SHOWN} more in report.json")
    lines += ["", "## Rules (in order)", "", "| rule | on | documents changed | fixes |", "|---|---|---:|---:|"]
    for name, s in report["rules"].items():
        lines.append(f"| {name} | {'yes' if s['enabled'] else 'no'} | {s['documents']} | {s['fixes']} |")
    lines += ["", "## Filters", "", "| filter | count |", "|---|---:|"]
    for section in ("script", "quality"):
        for k, v in sorted(report[section].items()):
            lines.append(f"| {section}.{k} | {v} |")
    ed, nd = report["exact_dedup"], report["near_dedup"]
    lines += ["", "## Deduplication", "",
              f"- exact: {'on' if ed['enabled'] else 'off'}, removed {ed['removed']}; kept documents by cluster size "
              f"{ed['cluster_sizes'] or '{}'}",
              f"- MinHash ({nd['shingle']}-syllable shingles, {nd['bands']} bands x {nd['rows']} rows, threshold "
              f"{nd['threshold']} -> effective {nd['effective_threshold']}): {'on' if nd['enabled'] else 'off'}, "
              f"removed {nd['removed']}; kept documents by cluster size {nd['cluster_sizes'] or '{}'}"]
    for p in nd["examples"]:
        lines.append(f"  - removed `{p['removed']}` ({p['removed_text']}) as a near-duplicate of kept "
                     f"`{p['kept']}` ({p['kept_text']})")
    lines += ["", "## Examples (before -> after)", ""]
    for rule, exs in report["examples"].items():
        lines.append(f"### {rule}")
        for e in exs:
            lines.append(f"- `{e['id']}`: `{e['before']}`" + (f" -> `{e['after']}`" if e["after"] else ""))
        lines.append("")
    lines += ["## Lengths", "", "![lengths](lengths.png)", ""]
    return "\n".join(lines)


def write_report(out: Path, cfg: CleanConfig) -> dict[str, Any]:
    """Write ``report.json``, ``report.md`` and ``lengths.png`` into ``out``.

    Raises:
        FtibError: the inputs held no document at all (an empty input is an error).
    """
    from ftib.core.rundir import atomic_write_json, atomic_write_text

    report = build_report(out, cfg)
    lengths = [k["syllables"] for k in _read_side(out / "_work" / "side" / "kept")]
    atomic_write_json(out / "report.json", report)
    _plot_lengths(lengths, out / "lengths.png")
    atomic_write_text(out / "report.md", _md(report))
    if report["read"]["documents"] == 0:
        raise FtibError(f"the inputs hold no document (see {out / 'report.md'}); an empty input is an error")
    return report


class WriteReport(PipelineStep):
    """The report as the pipeline's last datatrove stage (so that it also runs on Slurm
    and Ray, after the jobs it depends on)."""

    type = "📊 - STATS"
    name = "🧾 clean report"

    def __init__(self, out: str, cfg: CleanConfig) -> None:
        super().__init__()
        self.out = out
        self.cfg = cfg

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        write_report(Path(self.out), self.cfg)
        yield from data or ()
