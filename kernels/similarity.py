"""Embedding-reward similarity: masked mean pooling -> L2 normalise -> cosine -> rescale.

The semantic reward of GRPO (DESIGN "Kernels"): completions and references are embedded
by the same model; the score of completion n is the cosine of its mean-pooled hidden
state with the pooled embedding of its reference ``index[n]``, optionally rescaled with a
threshold tau to ``max(0, (s - tau) / (1 - tau))`` so scores below tau give no reward.

Implementations (``impl=``): ``"triton"`` (CUDA; two kernels: pool, then cosine),
``"native"`` (CPU, C++ in ``csrc/lib/similarity.cpp``: one pass over the hidden states,
threaded over completions, padding skipped), ``"torch"`` (the eager reference of
:mod:`ftib.kernels.reference.similarity`). ``"auto"`` picks Triton on CUDA and native on
CPU and logs it. Accumulation is float32 for bfloat16/float16 inputs. No backward: the
score is a reward, not a loss.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ftib.kernels import native
from ftib.kernels._dispatch import FLOAT_DTYPES, check_tensor, resolve_impl
from ftib.kernels.reference import similarity as reference

_OP = "embedding_similarity"
_IMPLS = ("triton", "native", "torch")


# ---------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------
@triton.jit
def _masked_pool_kernel(
    x_ptr, m_ptr, out_ptr, T, H, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr
):
    """out[n, hblock] = sum_t m[n, t] x[n, t, hblock] / sum_t m[n, t] (0 if the sum is 0)."""
    n = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = cols < H
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    msum = tl.zeros([BLOCK_T], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        row_ok = rows < T
        m = tl.load(m_ptr + n * T + rows, mask=row_ok, other=0.0)
        x = tl.load(
            x_ptr + n * T * H + rows[:, None] * H + cols[None, :],
            mask=row_ok[:, None] & col_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        acc += tl.sum(x * m[:, None], axis=0)
        msum += m
    total = tl.sum(msum, axis=0)
    inv = tl.where(total != 0.0, 1.0 / tl.where(total != 0.0, total, 1.0), 0.0)
    tl.store(out_ptr + n * H + cols, acc * inv, mask=col_ok)


@triton.jit
def _cosine_kernel(
    p_ptr, r_ptr, idx_ptr, out_ptr, H, threshold,
    HAS_INDEX: tl.constexpr, HAS_THRESHOLD: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """out[n] = cos(p[n], r[idx[n]]) with F.normalize's eps, then the threshold rescale."""
    n = tl.program_id(0).to(tl.int64)
    if HAS_INDEX:
        r = tl.load(idx_ptr + n).to(tl.int64)
    else:
        r = n
    dot = tl.zeros([BLOCK_H], dtype=tl.float32)
    pp = tl.zeros([BLOCK_H], dtype=tl.float32)
    rr = tl.zeros([BLOCK_H], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        cols = h0 + tl.arange(0, BLOCK_H)
        ok = cols < H
        a = tl.load(p_ptr + n * H + cols, mask=ok, other=0.0)
        b = tl.load(r_ptr + r * H + cols, mask=ok, other=0.0)
        dot += a * b
        pp += a * a
        rr += b * b
    a_norm = tl.maximum(tl.sqrt(tl.sum(pp, axis=0)), 1e-12)
    b_norm = tl.maximum(tl.sqrt(tl.sum(rr, axis=0)), 1e-12)
    s = tl.sum(dot, axis=0) / (a_norm * b_norm)
    if HAS_THRESHOLD:
        s = tl.maximum((s - threshold) / (1.0 - threshold), 0.0)
    tl.store(out_ptr + n, s)


def _pool_triton(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    N, T, H = hidden.shape
    out = torch.empty(N, H, dtype=torch.float32, device=hidden.device)
    if N == 0 or H == 0:
        return out
    BLOCK_H = min(256, triton.next_power_of_2(H))
    BLOCK_T = max(1, min(32, triton.next_power_of_2(max(T, 1)), 8192 // BLOCK_H))
    _masked_pool_kernel[(N, triton.cdiv(H, BLOCK_H))](
        hidden, mask, out, T, H, BLOCK_T=BLOCK_T, BLOCK_H=BLOCK_H
    )
    return out


def _similarity_triton(
    hidden: torch.Tensor,
    mask: torch.Tensor,
    ref: torch.Tensor,
    index: torch.Tensor | None,
    threshold: float | None,
) -> torch.Tensor:
    pooled = _pool_triton(hidden, mask)
    N, H = pooled.shape
    out = torch.empty(N, dtype=torch.float32, device=hidden.device)
    if N == 0:
        return out
    if index is not None:
        # Asynchronous on CUDA: a bad index fails the stream instead of reading garbage.
        torch._assert_async(((index >= 0) & (index < ref.shape[0])).all())
    BLOCK_H = min(1024, triton.next_power_of_2(max(H, 1)))
    _cosine_kernel[(N,)](
        pooled, ref, index if index is not None else pooled, out, H,
        float(threshold) if threshold is not None else 0.0,
        HAS_INDEX=index is not None, HAS_THRESHOLD=threshold is not None, BLOCK_H=BLOCK_H,
    )
    return out


# ---------------------------------------------------------------------------------------
# Custom op (traceable by torch.compile) and its fake implementation
# ---------------------------------------------------------------------------------------
@torch.library.custom_op("ftib::embedding_similarity", mutates_args=())
def _similarity_op(
    hidden: torch.Tensor,
    mask: torch.Tensor,
    ref: torch.Tensor,
    ref_mask: torch.Tensor | None,
    index: torch.Tensor | None,
    threshold: float | None,
    impl: str,
) -> torch.Tensor:
    if impl == "torch":
        if ref_mask is None:
            return reference.embedding_similarity(hidden, mask, ref, index, threshold=threshold)
        return reference.embedding_similarity(
            hidden, mask, None, index, ref_hidden=ref, ref_mask=ref_mask, threshold=threshold
        )
    mask = mask.to(torch.float32).contiguous()
    hidden = hidden.contiguous()
    if impl == "native":
        if ref_mask is not None:
            ref = native.masked_mean_pool(ref, ref_mask.to(torch.float32))
        return native.embedding_similarity(hidden, mask, ref.float(), index, threshold)
    # triton
    if ref_mask is not None:
        ref = _pool_triton(ref.contiguous(), ref_mask.to(torch.float32).contiguous())
    return _similarity_triton(hidden, mask, ref.float().contiguous(), index, threshold)


@_similarity_op.register_fake
def _similarity_fake(hidden, mask, ref, ref_mask, index, threshold, impl):
    return hidden.new_empty(hidden.shape[0], dtype=torch.float32)


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------
def embedding_similarity(
    hidden: torch.Tensor,
    mask: torch.Tensor,
    ref: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
    *,
    ref_hidden: torch.Tensor | None = None,
    ref_mask: torch.Tensor | None = None,
    threshold: float | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Similarity reward of each completion with its reference.

    Args:
        hidden: (N, T, H) float32/bfloat16/float16 hidden states of the completions.
        mask: (N, T) bool/integer/float mask (float values act as pooling weights).
        ref: (M, H) pooled reference embeddings; give either this or ``ref_hidden``.
        index: (N,) int64 reference row of each completion (GRPO: the prompt's index,
            i.e. ``arange(B).repeat_interleave(G)``); None means M == N, row n for n.
        ref_hidden: (M, Tr, H) reference hidden states, pooled with ``ref_mask`` (M, Tr).
        ref_mask: mask of ``ref_hidden``.
        threshold: tau in [0, 1) for the rescale ``max(0, (s - tau) / (1 - tau))``.
        impl: ``"auto"`` | ``"triton"`` | ``"native"`` | ``"torch"``.

    Returns:
        (N,) float32 scores. An all-masked completion scores 0.

    Raises:
        TypeError / ValueError naming the argument for a wrong type, dtype, shape or
        device; RuntimeError when ``impl`` cannot run on the inputs' device.
    """
    check_tensor(_OP, "hidden", hidden, ndim=3, dtypes=FLOAT_DTYPES)
    dev = hidden.device
    N, T, H = hidden.shape
    check_tensor(_OP, "mask", mask, ndim=2, device=dev, shape=(N, T))
    if (ref is None) == (ref_hidden is None):
        raise ValueError(f"{_OP}: give exactly one of ref (M, H) and ref_hidden (M, Tr, H)")
    if ref is not None:
        if ref_mask is not None:
            raise ValueError(f"{_OP}: ref_mask goes with ref_hidden, not with ref")
        check_tensor(_OP, "ref", ref, ndim=2, dtypes=FLOAT_DTYPES, device=dev, shape=(None, H))
        table, table_mask = ref, None
    else:
        assert ref_hidden is not None  # exactly one of ref and ref_hidden (checked above)
        check_tensor(
            _OP, "ref_hidden", ref_hidden, ndim=3, dtypes=FLOAT_DTYPES, device=dev,
            shape=(None, None, H),
        )
        if ref_mask is None:
            raise ValueError(f"{_OP}: ref_hidden needs ref_mask (M, Tr)")
        check_tensor(_OP, "ref_mask", ref_mask, ndim=2, device=dev, shape=ref_hidden.shape[:2])
        table, table_mask = ref_hidden, ref_mask
    M = table.shape[0]
    if index is None:
        if M != N:
            raise ValueError(f"{_OP}: index is required when there are {M} references for {N} completions")
    else:
        check_tensor(_OP, "index", index, ndim=1, dtypes=(torch.int64, torch.int32), device=dev, shape=(N,))
        index = index.to(torch.int64).contiguous()
    if threshold is not None and not (0.0 <= threshold < 1.0 and math.isfinite(threshold)):
        raise ValueError(f"{_OP}: threshold must be in [0, 1), got {threshold}")
    chosen = resolve_impl(_OP, impl, dev, cpu_default="native", choices=_IMPLS)
    return _similarity_op(hidden, mask, table, table_mask, index, threshold, chosen)
