"""Shared setup of the kernel tests.

Triton cases carry the ``triton_interp`` marker. Triton decides at decoration time
whether a kernel is compiled or interpreted, so they cannot run in a session that
imported the kernels without ``TRITON_INTERPRET=1``: in a normal CPU run they are skipped
and ``test_triton_interpreter.py`` runs exactly these cases in a subprocess with the
variable set (on a CUDA machine they run directly).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The suite runs with --import-mode=importlib, which does not put test folders on
# sys.path; the shared helpers module (kernel_parity.py) lives next to this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "triton_interp: Triton kernel case; on CPU runs under TRITON_INTERPRET=1"
    )
