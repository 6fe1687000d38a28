"""Runs every Triton kernel case (marker ``triton_interp``) on the CPU, in a subprocess
with ``TRITON_INTERPRET=1``: Triton chooses compiled or interpreted kernels when a kernel
is decorated, i.e. when ftib.kernels.* is first imported, so the variable has to be set
before that import, which this pytest process has already done."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="already interpreting")
@pytest.mark.skipif(torch.cuda.is_available(), reason="Triton cases run directly on CUDA")
def test_triton_cases_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    files = [str(HERE / f) for f in ("test_similarity.py", "test_advantages.py", "test_grpo_loss.py",
                                          "test_linear_ce.py")]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider",
         "-m", "triton_interp and not slow", "-W", "ignore::RuntimeWarning"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"Triton interpreter cases failed:\n{tail}"
    assert " passed" in proc.stdout and "no tests ran" not in proc.stdout, tail
