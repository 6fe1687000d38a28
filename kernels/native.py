"""Typed access to the private native module ``ftib.kernels._C``.

Import errors are reported with how to build the module, never hidden.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any


def load() -> ModuleType:
    """Return ``ftib.kernels._C`` or raise ImportError explaining how to build it."""
    try:
        from ftib.kernels import _C  # type: ignore[attr-defined]
    except ImportError as exc:
        raise ImportError(
            "ftib's native module ftib.kernels._C is not built or does not load "
            f"({exc}); reinstall with `pip install -e .` (needs a C++17 compiler and CMake)"
        ) from exc
    return _C


def build_info() -> dict[str, Any]:
    """Compiler, build type, sanitizers and hardware threads of the native build."""
    return dict(load().build_info())


def utf8_codepoints(data: bytes) -> list[int]:
    """Strictly decode UTF-8; ValueError names the byte offset of the first bad byte."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"utf8_codepoints expects bytes, got {type(data).__name__}")
    return list(load().utf8_codepoints(bytes(data)))


# --- GRPO kernels (issue 7) -------------------------------------------------------------
# The native functions take raw addresses of contiguous CPU tensors; these wrappers own
# the checks that make that safe (device, dtype, contiguity, shape), so callers get a
# Python exception naming the argument instead of a read out of bounds.

_SCALAR_KIND = {"float32": 0, "bfloat16": 1, "float16": 2}
_ADVANTAGE_SCALE = {"group": 0, "batch": 1, "none": 2}


def _cpu_contiguous(name: str, t: Any, dtypes: tuple[str, ...], ndim: int) -> Any:
    import torch

    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU tensor for the native kernels, got {t.device}")
    if str(t.dtype).removeprefix("torch.") not in dtypes:
        raise TypeError(f"{name} has dtype {t.dtype}; the native kernel takes {dtypes}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    return t.contiguous()


def masked_mean_pool(hidden: Any, mask: Any, *, threads: int | None = None) -> Any:
    """Masked mean pooling on the CPU.

    Args:
        hidden: (N, T, H) float32/bfloat16/float16 CPU tensor.
        mask: (N, T) float32 CPU tensor (weights; 0 skips the position).
        threads: worker threads; default ``torch.get_num_threads()``.

    Returns:
        (N, H) float32 tensor; rows whose mask sums to 0 are zeros.
    """
    import torch

    hidden = _cpu_contiguous("hidden", hidden, tuple(_SCALAR_KIND), 3)
    mask = _cpu_contiguous("mask", mask, ("float32",), 2)
    N, T, H = hidden.shape
    if tuple(mask.shape) != (N, T):
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected {(N, T)}")
    out = torch.empty(N, H, dtype=torch.float32)
    load().masked_mean_pool(
        hidden.data_ptr(), _SCALAR_KIND[str(hidden.dtype).removeprefix("torch.")],
        mask.data_ptr(), N, T, H, out.data_ptr(), threads or torch.get_num_threads(),
    )
    return out


def embedding_similarity(
    hidden: Any,
    mask: Any,
    ref: Any,
    index: Any | None,
    threshold: float | None,
    *,
    threads: int | None = None,
) -> Any:
    """Fused pool -> L2 normalise -> cosine with ``ref[index]`` -> threshold rescale (CPU).

    Args:
        hidden: (N, T, H) float32/bfloat16/float16 CPU tensor.
        mask: (N, T) float32 CPU tensor.
        ref: (M, H) float32 CPU tensor of pooled reference embeddings.
        index: (N,) int64 CPU tensor or None (completion n uses reference n; needs M == N).
        threshold: tau < 1 or None.
        threads: worker threads; default ``torch.get_num_threads()``.

    Returns:
        (N,) float32 tensor. ValueError names an index outside [0, M).
    """
    import torch

    hidden = _cpu_contiguous("hidden", hidden, tuple(_SCALAR_KIND), 3)
    mask = _cpu_contiguous("mask", mask, ("float32",), 2)
    ref = _cpu_contiguous("ref", ref, ("float32",), 2)
    N, T, H = hidden.shape
    M = ref.shape[0]
    if tuple(mask.shape) != (N, T):
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected {(N, T)}")
    if ref.shape[1] != H:
        raise ValueError(f"ref has hidden size {ref.shape[1]}; hidden has {H}")
    if index is None:
        if M != N:
            raise ValueError(f"index is required when ref has {M} rows for {N} completions")
        index_ptr = 0
    else:
        index = _cpu_contiguous("index", index, ("int64",), 1)
        if index.shape[0] != N:
            raise ValueError(f"index has {index.shape[0]} entries for {N} completions")
        index_ptr = index.data_ptr()
    out = torch.empty(N, dtype=torch.float32)
    load().embedding_similarity(
        hidden.data_ptr(), _SCALAR_KIND[str(hidden.dtype).removeprefix("torch.")],
        mask.data_ptr(), N, T, H, ref.data_ptr(), M, index_ptr,
        threshold is not None, float(threshold) if threshold is not None else 0.0,
        out.data_ptr(), threads or torch.get_num_threads(),
    )
    return out


def group_advantages(
    rewards: Any, group_size: int, scale: str, eps: float, *, threads: int | None = None
) -> tuple[Any, Any, Any, float]:
    """GRPO advantages on the CPU with TRL's semantics (see ftib.kernels.advantages).

    Args:
        rewards: (B*G,) float32 CPU tensor.
        group_size: G >= 1 dividing the number of rewards.
        scale: ``"group"`` | ``"batch"`` | ``"none"``.
        eps: added to the std before dividing.

    Returns:
        advantages (B*G,), group mean (B,), group std (B,) float32 tensors and the share
        of elements whose scaling std is 0.
    """
    import torch

    rewards = _cpu_contiguous("rewards", rewards, ("float32",), 1)
    if scale not in _ADVANTAGE_SCALE:
        raise ValueError(f"scale must be one of {tuple(_ADVANTAGE_SCALE)}, got {scale!r}")
    n = rewards.shape[0]
    if group_size < 1 or n % group_size:
        raise ValueError(f"rewards has {n} entries, not a multiple of group_size={group_size}")
    groups = n // group_size
    adv = torch.empty(n, dtype=torch.float32)
    mean = torch.empty(groups, dtype=torch.float32)
    std = torch.empty(groups, dtype=torch.float32)
    zero = load().group_advantages(
        rewards.data_ptr(), n, group_size, _ADVANTAGE_SCALE[scale], float(eps),
        adv.data_ptr(), mean.data_ptr(), std.data_ptr(), threads or torch.get_num_threads(),
    )
    return adv, mean, std, float(zero)
