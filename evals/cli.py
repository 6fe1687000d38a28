"""``ftib eval``: run evaluators on one model outside a recipe, and write reports.

    ftib eval --model tiny-qwen3-vl --bench mmbench,pope --data ftibworld:tiny
    ftib eval --report runs/tiny            # report.md + scores_by_stage.png of a run
    ftib eval --bench pope --data POPE.tsv --predictions Model_POPE.tsv   # score, no model

Output under ``--out`` (default ``runs/eval-<model name>``): ``eval/<bench>.json``
(metrics, details, decoding settings), ``eval/<bench>.records.jsonl`` (every item) and
``eval/report.md``, plus the predictions in VLMEvalKit's and lmms-eval's forms
(``eval/<bench>.predictions.tsv``, ``eval/<bench>.samples.jsonl``, see
:mod:`ftib.evals.interop`). ``--predictions FILE`` scores a VLMEvalKit or lmms-eval
prediction file instead of running a model. Every config is built and checked before
the model is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import yaml

from ftib.core import config as cfg
from ftib.core.errors import ConfigError
from ftib.core.interfaces import RunContext
from ftib.core.registry import EVALUATORS, Registry
from ftib.core.pipeline import jsonable, record_lines
from ftib.core.rundir import MetricsSink, atomic_write_json, atomic_write_text

log = logging.getLogger("ftib.evals")

# Command-line options that fill config keys of the same name where an evaluator has one.
_SHARED = ("limit", "batch_size", "encoder", "base_model", "judge_model", "max_new_tokens")


def build_configs(args: argparse.Namespace, registry: Registry) -> dict[str, tuple[type, Any]]:
    """``bench -> (evaluator class, config)`` for every ``--bench``, all validated."""
    benches = [b.strip() for b in args.bench.split(",") if b.strip()]
    if not benches:
        raise ConfigError("--bench: name at least one evaluator")
    overrides: dict[str, Any] = {}
    for item in args.set or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)
    out = {}
    used: set[str] = set()
    for bench in benches:
        cls = registry.load(EVALUATORS, bench)
        names = {f.name for f in dataclasses.fields(cls.Config)}
        data: dict[str, Any] = {}
        if "data" in names and args.data is not None:
            data["data"] = args.data
        for key in _SHARED:
            value = getattr(args, key, None)
            if value is not None and key in names:
                data[key] = value
        for key, value in overrides.items():
            if key in names:
                data[key] = value
                used.add(key)
        out[bench] = (cls, cfg.build(cls.Config, data, where=f"eval.{bench}"))
    unused = sorted(set(overrides) - used)
    if unused:
        raise ConfigError(f"--set {unused[0]}: no evaluator among {', '.join(benches)} has this key")
    return out


def run_eval(args: argparse.Namespace) -> Path:
    from ftib.core.pipeline import resolve_device, resolve_dtype, seed_everything
    from ftib.evals.report import collect_eval_dir, write_report

    configs = build_configs(args, Registry())
    out = Path(args.out) if args.out else Path("runs") / f"eval-{Path(str(args.model)).name}"
    eval_dir = out / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    from ftib.models.bundle import load_bundle

    # One model in memory for every benchmark.
    bundle = load_bundle(args.model, device=device, dtype=dtype)
    sink = MetricsSink(out / "metrics.jsonl")
    for bench, (cls, conf) in configs.items():
        seed_everything(args.seed)
        work = eval_dir / bench
        work.mkdir(parents=True, exist_ok=True)
        ctx = RunContext(run_dir=out, work_dir=work, seed=args.seed, device=device, dtype=dtype,
                         model_source=str(args.model), bundle=bundle, metrics=sink.child(eval=bench),
                         logger=logging.getLogger(f"ftib.eval.{bench}"))
        started = time.time()
        ev = cls(conf)
        result = ev.evaluate(ctx)
        seconds = time.time() - started
        from ftib.evals import interop

        # the items again, for the question and option columns of the prediction files
        items = ev.load() if bench in interop.BENCH_NAMES else None
        _write_outputs(eval_dir, bench, conf=conf, model=str(args.model), result=result, items=items,
                       seconds=seconds)
        log.info("%s: %s", bench, {k: v for k, v in list(result.metrics.items())[:4]})
    write_report(collect_eval_dir(eval_dir, point=Path(str(args.model)).name), eval_dir,
                 title=f"FTibBench results: {args.model}")
    return out


def _write_outputs(eval_dir: Path, bench: str, *, conf: Any, model: str, result: Any, items: Any,
                   seconds: float) -> None:
    """``<bench>.records.jsonl``, ``<bench>.json`` and, for the question-answering
    benchmarks, the predictions in VLMEvalKit's and lmms-eval's forms."""
    from ftib.evals import interop

    lines = record_lines(result, bench)
    atomic_write_text(eval_dir / f"{bench}.records.jsonl", "".join(x + "\n" for x in lines))
    atomic_write_json(eval_dir / f"{bench}.json", jsonable({
        "evaluator": bench, "model": model, "config": cfg.to_dict(conf),
        "metrics": result.metrics, "details": result.details,
        "seconds": round(seconds, 3),
    }))
    if bench in interop.BENCH_NAMES:
        by_id = {it.id: it for it in items} if items else {}
        recs = [{**r, "options": by_id[r["id"]].options} if r["id"] in by_id else r for r in result.records]
        interop.write_predictions(eval_dir, bench, recs, {i: it.question for i, it in by_id.items()})


def score_predictions(args: argparse.Namespace) -> Path:
    """``ftib eval --predictions FILE``: score a VLMEvalKit / lmms-eval prediction file."""
    from ftib.evals import interop
    from ftib.evals.report import collect_eval_dir, write_report

    configs = build_configs(args, Registry())
    if len(configs) != 1:
        raise ConfigError("--predictions: name exactly one --bench (the file's benchmark)")
    ((bench, (cls, conf)),) = configs.items()
    if bench not in interop.BENCH_NAMES:
        raise ConfigError(f"--predictions: {bench} is not a question-answering benchmark "
                          f"({', '.join(interop.BENCH_NAMES)})")
    src = Path(args.predictions)
    out = Path(args.out) if args.out else Path("runs") / f"eval-{src.stem}"
    eval_dir = out / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    ev = cls(conf)
    items = ev.load()
    replies, missing = interop.align_predictions(items, interop.read_predictions(src, bench), src)
    result = ev.score(items, replies)
    result.details.update(missing, predictions=str(src))
    _write_outputs(eval_dir, bench, conf=conf, model=f"predictions:{src}", result=result, items=items,
                   seconds=time.time() - started)
    write_report(collect_eval_dir(eval_dir, point=src.stem), eval_dir, title=f"FTibBench results: {src.name}")
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    from ftib.evals.report import collect_eval_dir, write_report, write_run_report

    if args.report:
        src = Path(args.report)
        if (src / "manifest.json").is_file():
            written = write_run_report(src)
        else:
            written = write_report(collect_eval_dir(src), src)
        for path in written.values():
            print(path)
        return 0
    if getattr(args, "predictions", None):
        if not args.bench:
            raise ConfigError("ftib eval --predictions needs --bench (the file's benchmark)")
        out = score_predictions(args)
        print((out / "eval" / "report.md").read_text(encoding="utf-8"))
        print(f"results: {out / 'eval'}")
        return 0
    if not args.model or not args.bench:
        raise ConfigError("ftib eval needs --model and --bench (or --report RUN_DIR, or --predictions FILE)")
    out = run_eval(args)
    print((out / "eval" / "report.md").read_text(encoding="utf-8"))
    print(f"results: {out / 'eval'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ftib eval`` (entry point ``ftib.commands: eval``)."""
    p = subparsers.add_parser(
        "eval", help="evaluate a model on FTibBench / text tasks, or write a run's report",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="preset name, local directory or hub name")
    p.add_argument("--bench", help="comma-separated evaluator names (see `ftib list ftib.evaluators`)")
    p.add_argument("--data", help="ftibworld[:SIZE[:SEED]] (default: each evaluator's, ftibworld), "
                   "a FTibWorld build folder, or the benchmark's file/folder")
    p.add_argument("--out", help="output directory (default runs/eval-<model name>)")
    p.add_argument("--limit", type=int, help="first N items of each file")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
    p.add_argument("--encoder", help="sentence-transformers directory for semantic similarity")
    p.add_argument("--base-model", dest="base_model", help="base model for alignment_tax")
    p.add_argument("--judge-model", dest="judge_model", help="local model resolving unparsed replies")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="other config keys, applied to every evaluator that has them")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--predictions", metavar="FILE",
                   help="score a VLMEvalKit (.xlsx/.tsv/.csv) or lmms-eval (samples .jsonl) prediction "
                   "file for one --bench instead of running a model")
    p.add_argument("--report", metavar="RUN_DIR",
                   help="only write report.md (+ PNG) for a run directory or an eval/ folder")
    p.set_defaults(func=cmd_eval)
