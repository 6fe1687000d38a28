"""Throughput and memory of ``ftib data clean`` on real Tibetan text.

    python -m ftib.bench.clean_throughput [DATA_DIR] [--workers 1 2]

Cleans the ``.txt`` files of ``DATA_DIR`` (default ``../shared/data``; one document per
line) into a fresh folder once per worker count, with as many tasks as files, and prints
input MB/s (wall clock, whole pipeline: all eight stages including process start-up) and
the peak resident memory of the main process and of its worker processes. Not a
pytest-benchmark suite: one run takes tens of seconds.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from ftib.data.clean.config import load_clean_config
    from ftib.data.clean.pipeline import run_clean

    root = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", nargs="?", default=str(root.parent / "shared" / "data"))
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--start-method", default="forkserver", choices=["forkserver", "fork", "spawn"])
    args = p.parse_args(argv)
    files = sorted(Path(args.data).glob("*.txt"))
    if not files:
        raise SystemExit(f"no .txt files in {args.data}")
    mb = sum(f.stat().st_size for f in files) / 1e6
    for w in args.workers:
        cfg = load_clean_config(None, {"read": {"txt_mode": "line"}, "executor": {"workers": w, "tasks": len(files),
                                                                       "start_method": args.start_method}})
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            run_clean(files, Path(tmp) / "out", cfg, progress=False)
            dt = time.perf_counter() - t0
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"start_method={args.start_method} workers={w} tasks={len(files)} input={mb:.2f} MB time={dt:.1f}s -> {mb / dt:.3f} MB/s; "
              f"peak RSS main {own:.0f} MiB, largest child {kids:.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
