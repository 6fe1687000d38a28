"""Type-check the whole ``ftib`` package with mypy against a baseline that may only shrink.

The repository's folders are the subpackages of the namespace package ``ftib``
(``ftib.core`` -> ``core/``); setuptools' editable install maps them with an import hook
that static tools cannot see. This script gives mypy the same view the interpreter has:
a temporary folder holding one symlink, ``ftib -> <repository root>``, on ``MYPYPATH``,
so ``-p ftib.core`` finds ``core/`` and every ``ftib.*`` import resolves to one module.

The baseline (``.ci/mypy-baseline.txt``) lists the known errors as
``<path>: <code>: <message>`` without line numbers, so unrelated edits do not move it. A
run fails when an error is not in the baseline (or occurs more often than listed); an
error fixed is reported so the baseline can be shrunk with ``--update``.

Usage:
    python .ci/typecheck.py            # check against the baseline
    python .ci/typecheck.py --update   # rewrite the baseline from the current errors
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / ".ci" / "mypy-baseline.txt"
PACKAGES = ("core", "kernels", "models", "data", "stages", "evals", "bench")
# ``path:line: error: message  [code]`` (columns off, the default)
_LINE = re.compile(r"^ftib/(?P<path>[^:]+):\d+: error: (?P<msg>.*?)\s+\[(?P<code>[a-z-]+)\]$")


def run_mypy() -> list[str]:
    with tempfile.TemporaryDirectory(prefix="ftib-mypy-") as tmp:
        (Path(tmp) / "ftib").symlink_to(ROOT, target_is_directory=True)
        cmd = [sys.executable, "-m", "mypy", "--ignore-missing-imports", "--no-pretty",
               "--show-error-codes", "--no-error-summary", "--cache-dir", str(Path(tmp) / ".cache")]
        for pkg in PACKAGES:
            cmd += ["-p", f"ftib.{pkg}"]
        env = {**os.environ, "MYPYPATH": tmp}
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        if proc.returncode not in (0, 1):  # 2: mypy itself failed (crash, bad flags)
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"mypy failed to run (exit {proc.returncode})")
    keys = []
    for line in proc.stdout.splitlines():
        m = _LINE.match(line.replace(tmp + "/", ""))
        if m:
            keys.append(f"{m['path']}: {m['code']}: {m['msg']}")
    return keys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--update", action="store_true", help="rewrite the baseline")
    args = ap.parse_args()
    found = collections.Counter(run_mypy())
    if args.update:
        BASELINE.write_text("".join(f"{k}\n" for k in sorted(found.elements())), encoding="utf-8")
        print(f"baseline: {sum(found.values())} errors written to {BASELINE.relative_to(ROOT)}")
        return 0
    known = collections.Counter(
        line for line in BASELINE.read_text(encoding="utf-8").splitlines() if line.strip()
    ) if BASELINE.is_file() else collections.Counter()
    new = found - known
    fixed = known - found
    print(f"mypy: {sum(found.values())} errors, baseline {sum(known.values())}")
    if fixed:
        print(f"{sum(fixed.values())} baseline errors are gone; shrink the baseline with "
              "`python .ci/typecheck.py --update`")
    if new:
        print("new type errors (not in .ci/mypy-baseline.txt):")
        for key, n in sorted(new.items()):
            print(f"  {key}" + (f"  (x{n})" if n > 1 else ""))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
