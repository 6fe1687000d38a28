"""``ftib data``: build FTibWorld and check data files.

    ftib data build [--out DIR] [--size tiny|small|medium] [--seed N] [--image-size PX]
    ftib data check DIR
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


def register(subparsers: argparse._SubParsersAction) -> None:
    from ftib.data.world.build import DEFAULT_IMAGE_SIZE, DEFAULT_SIZE, SIZES

    p = subparsers.add_parser("data", help="build FTibWorld, check data files",
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
