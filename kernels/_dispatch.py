"""Kernel selection and argument checks shared by the GRPO ops.

Kernel choice is explicit (STYLE item 4): every op takes ``impl=``; ``"auto"`` resolves
to the device default (Triton on CUDA, the native C++ or chunked PyTorch path on CPU)
and logs that choice once per op and device; an explicit request that cannot be met
raises instead of falling back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch

log = logging.getLogger("ftib.kernels")

_logged_defaults: set[tuple[str, str]] = set()


def triton_interpreter_active() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    from triton import knobs

    return bool(knobs.runtime.interpret)


def resolve_impl(
    op: str, impl: str, device: torch.device, *, cpu_default: str, choices: Sequence[str]
) -> str:
    """Return the implementation to run ``op`` with on ``device``.

    Args:
        op: op name used in messages and the log line.
        impl: ``"auto"`` or one of ``choices``.
        device: device of the op's main input.
        cpu_default: what ``"auto"`` means on CPU.
        choices: implementations this op has.

    Raises:
        ValueError: ``impl`` is unknown.
        RuntimeError: ``impl`` cannot run on ``device`` (e.g. ``"triton"`` on CPU without
            ``TRITON_INTERPRET=1``, ``"native"`` on CUDA).
    """
    if impl != "auto" and impl not in choices:
        raise ValueError(f"{op}: impl={impl!r} is not one of {['auto', *choices]}")
    if impl == "auto":
        chosen = "triton" if device.type == "cuda" else cpu_default
        key = (op, device.type)
        if key not in _logged_defaults:
            _logged_defaults.add(key)
            log.info("%s: impl='auto' runs %r on %s", op, chosen, device.type)
        return chosen
    if impl == "triton" and device.type != "cuda" and not (
        device.type == "cpu" and triton_interpreter_active()
    ):
        raise RuntimeError(
            f"{op}: impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before "
            f"triton is imported, for CPU tests); got tensors on {device}"
        )
    if impl == "native" and device.type != "cpu":
        raise RuntimeError(f"{op}: impl='native' runs on CPU tensors only; got {device}")
    return impl


def check_tensor(
    op: str,
    name: str,
    t: object,
    *,
    ndim: int | None = None,
    dtypes: Iterable[torch.dtype] | None = None,
    device: torch.device | None = None,
    shape: Sequence[int | None] | None = None,
) -> torch.Tensor:
    """Validate one argument; every error names the op and the argument."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if shape is not None:
        for i, want in enumerate(shape):
            if want is not None and t.shape[i] != want:
                raise ValueError(
                    f"{op}: {name} has shape {tuple(t.shape)}; dim {i} must be {want}"
                )
    if dtypes is not None:
        allowed = tuple(dtypes)
        if t.dtype not in allowed:
            raise TypeError(f"{op}: {name} has dtype {t.dtype}; expected one of {allowed}")
    if device is not None and t.device != device:
        raise ValueError(f"{op}: {name} is on {t.device} but the other inputs are on {device}")
    return t


FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
