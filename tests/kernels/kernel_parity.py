"""Tolerance table and comparison helper shared by the kernel tests (STYLE item 7)."""

from __future__ import annotations

import os

import pytest
import torch

# (atol, rtol) per input dtype, for outputs and gradients alike. bfloat16/float16 runs
# compare two computations that both round their GEMM outputs to the input dtype.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (2e-5, 2e-4),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str):
    """Assert elementwise closeness; the message says how many elements differ and where."""
    atol, rtol = TOLERANCES[dtype]
    a = actual.detach().float().cpu()
    e = expected.detach().float().cpu()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    bad = ~torch.isclose(a, e, atol=atol, rtol=rtol, equal_nan=True)
    if bad.any():
        where = [tuple(i) for i in bad.nonzero()[:5].tolist()]
        diff = (a - e).abs().nan_to_num(float("inf"))
        worst = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape)) if diff.dim() else ()
        raise AssertionError(
            f"{what} ({dtype}): {int(bad.sum())} of {bad.numel()} elements differ beyond "
            f"atol={atol}, rtol={rtol}; first at {where}; largest |diff| "
            f"{float(diff.max()):.3g} at {worst}: got {float(a[worst]):.6g}, "
            f"expected {float(e[worst]):.6g}"
        )


INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def impl_params(*impls: str) -> list:
    """pytest params for implementations. Triton ones carry the ``triton_interp`` marker
    and, on a CPU-only machine, are skipped unless this process runs Triton's interpreter
    (test_triton_interpreter.py runs them in a subprocess that does)."""
    params = []
    for impl in impls:
        if impl == "triton":
            marks = [pytest.mark.triton_interp]
            if not (INTERPRET or torch.cuda.is_available()):
                marks.append(pytest.mark.skip(reason="runs in test_triton_interpreter.py's subprocess"))
            params.append(pytest.param(impl, marks=marks, id=impl))
        else:
            params.append(pytest.param(impl, id=impl))
    return params


def device_for(impl: str) -> str:
    """Triton cases run on CUDA when there is one and no interpreter was asked for."""
    return "cuda" if impl == "triton" and not INTERPRET and torch.cuda.is_available() else "cpu"
