"""``ftib data``: build FTibWorld and check data files.

    ftib data build [--out DIR] [--size tiny|small|medium] [--seed N] [--image-size PX]
    ftib data check DIR
    ftib data clean IN... --out DIR [--executor local|slurm|ray] [--workers N] [--config clean.yaml]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEFAULT_OUT = "ftibworld"


def cmd_build(args: argparse.Namespace) -> int:
    from ftib.data.world import build_world

    t0 = time.perf_counter()
    manifest = build_world(Path(args.out), size=args.size, seed=args.seed, image_size=args.image_size)
    seconds = time.perf_counter() - t0
    rows = sum(f["rows"] for f in manifest["files"].values())
    images = sum(d["files"] for k, d in manifest["dirs"].items() if not k.endswith("questions_answers_YN"))
    print(f"FTibWorld ({args.size}, seed {args.seed}) written to {args.out} in {seconds:.1f}s: "
          f"{len(manifest['files'])} record files, {rows} rows, image folders with {images} files; "
          f"see {Path(args.out) / 'DATASET_CARD.md'}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from ftib.data.loaders import load_world

    parts = load_world(Path(args.dir))
    for name, ds in parts.items():
        print(f"{name:<18} {len(ds):>7} rows  ok")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from ftib.data.clean.config import load_clean_config
    from ftib.data.clean.pipeline import run_clean

    overrides: dict = {}
    if args.executor is not None:
        overrides.setdefault("executor", {})["kind"] = args.executor
    if args.workers is not None:
        overrides.setdefault("executor", {})["workers"] = args.workers
    if args.tasks is not None:
        overrides.setdefault("executor", {})["tasks"] = args.tasks
    if args.txt_mode is not None:
        overrides["read"] = {"txt_mode": args.txt_mode}
    cfg = load_clean_config(Path(args.config) if args.config else None, overrides)
    t0 = time.perf_counter()
    report = run_clean([Path(p) for p in args.inputs], Path(args.out), cfg, force=args.force,
                       progress=not args.no_progress)
    if cfg.executor.kind == "slurm":
        print(f"submitted to Slurm; the report will be {report}")
        return 0
    import json

    summary = json.loads((report.parent / "report.json").read_text(encoding="utf-8"))
    print(f"cleaned {summary['read']['documents']} documents into {summary['kept']['documents']} in "
          f"{time.perf_counter() - t0:.1f}s; report: {report}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from ftib.data.world.build import DEFAULT_IMAGE_SIZE, DEFAULT_SIZE, SIZES

    p = subparsers.add_parser("data", help="build FTibWorld, check and clean data files",
                              description="Build the generated FTibWorld data and FTibBench-mini, or "
                              "validate a build through the loaders.")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="generate FTibWorld (deterministic for a seed)",
                       description="Write every stage's data and FTibBench-mini with a DATASET_CARD.md.")
    b.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    b.add_argument("--size", default=DEFAULT_SIZE, choices=list(SIZES), help=f"default: {DEFAULT_SIZE}")
    b.add_argument("--seed", type=int, default=0, help="world seed (default: 0)")
    b.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                   help=f"image side in pixels (default: {DEFAULT_IMAGE_SIZE})")
    b.set_defaults(func=cmd_build)
    c = sub.add_parser("check", help="load and validate every part of a FTibWorld build")
    c.add_argument("dir", help="a directory written by `ftib data build`")
    c.set_defaults(func=cmd_check)
    k = sub.add_parser("clean", help="clean a Tibetan corpus (datatrove: repair, filter, dedup)",
                       description="Normalise, repair, script- and quality-filter and deduplicate Tibetan "
                       "text into JSONL/Parquet that `stages.cpt.data: [DIR]` reads; writes report.md. "
                       "Running the same command again resumes. Needs the `clean` extra (datatrove).")
    k.add_argument("inputs", nargs="+", metavar="IN",
                   help=".txt, .jsonl[.gz], .parquet files, folders of them, or `datasets` save_to_disk folders")
    k.add_argument("--out", required=True, help="output folder")
    k.add_argument("--executor", choices=["local", "slurm", "ray"], default=None,
                   help="datatrove executor (default: the config's, local)")
    k.add_argument("--workers", type=int, default=None, help="tasks run at once (default: 1)")
    k.add_argument("--tasks", type=int, default=None, help="shards per stage (default: --workers)")
    k.add_argument("--config", default=None, help="clean.yaml (see docs/data.md)")
    k.add_argument("--txt-mode", choices=["block", "line"], default=None,
                   help=".txt documents: blank-line-separated blocks (default) or lines")
    k.add_argument("--force", action="store_true", help="replace an output folder of another pipeline")
    k.add_argument("--no-progress", action="store_true", help="no progress bar")
    k.set_defaults(func=cmd_clean)
