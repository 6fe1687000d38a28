"""Row passes over one chunk of logits, shared by the fused linear losses.

The fused linear ops (:mod:`ftib.kernels.grpo_loss`, :mod:`ftib.kernels.linear_ce`)
never hold (tokens, V) logits: they multiply ``chunk`` rows of hidden states by the
lm_head weight, giving a (chunk, V) buffer, and run two row passes over it:

1. :func:`lse_rows`: per row the log-sum-exp of ``z / temperature``, the logit of the
   label and (optionally) the entropy;
2. :func:`grad_rows`: in place, ``z <- (g * onehot(y) - g_softmax * softmax(z / T)) / T``,
   the gradient of the loss with respect to the logits for per-row coefficients ``g``
   (dL/dlogp of the label) and ``g_softmax`` (defaults to ``g``; a loss with a term in
   the log-sum-exp itself, such as the z-loss, sets it apart).

Then two GEMMs give dL/dhidden of the chunk and add its share of dL/dweight
(:func:`chunk_logits` and :func:`accumulate_chunk_grads`).

Two implementations of the row passes with the same contract: Triton kernels streaming
over the vocabulary in BLOCK_V tiles with an online log-sum-exp (Milakov & Gimelshein
2018, "Online normalizer calculation for softmax"), and PyTorch ops on the chunk (CPU),
which turn ``z`` into ``softmax(z / T)`` in place during the first pass.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CPU_CHUNK_BYTES = 128 << 20
GPU_CHUNK_BYTES = 512 << 20


def default_chunk(V: int, itemsize: int, device: torch.device) -> int:
    """Rows per chunk so that one (chunk, V) buffer of ``itemsize`` bytes fits in 128 MiB
    on CPU, 512 MiB on CUDA (at least 16 rows)."""
    budget = GPU_CHUNK_BYTES if device.type == "cuda" else CPU_CHUNK_BYTES
    return max(16, budget // max(1, V * itemsize))


# ---------------------------------------------------------------------------------------
# Triton kernels: rows = tokens, columns = vocabulary
# ---------------------------------------------------------------------------------------
@triton.jit
def _row_lse_kernel(
    z_ptr, stride, y_ptr, lse_ptr, zy_ptr, ent_ptr, V, inv_temp,
    ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Streaming log-sum-exp of z[row] * inv_temp, the chosen logit and the entropy."""
    row = tl.program_id(0).to(tl.int64)
    base = z_ptr + row * stride
    y = tl.load(y_ptr + row)
    m = float("-inf")
    s = 0.0
    t = 0.0
    zy = 0.0
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        ok = cols < V
        z = tl.load(base + cols, mask=ok, other=float("-inf")).to(tl.float32) * inv_temp
        m_new = tl.maximum(m, tl.max(z, axis=0))
        rescale = tl.exp(m - m_new)
        e = tl.exp(z - m_new)
        s = s * rescale + tl.sum(e, axis=0)
        if ENTROPY:
            t = t * rescale + tl.sum(e * tl.where(ok, z, 0.0), axis=0)
        zy += tl.sum(tl.where(cols == y, z, 0.0), axis=0)
        m = m_new
    lse = m + tl.log(s)
    tl.store(lse_ptr + row, lse)
    tl.store(zy_ptr + row, zy)
    if ENTROPY:
        tl.store(ent_ptr + row, lse - t / s)


@triton.jit
def _row_grad_kernel(
    z_ptr, stride, y_ptr, lse_ptr, g_ptr, gs_ptr, V, inv_temp, BLOCK_V: tl.constexpr
):
    """In place: z[row] <- inv_temp * (g[row] onehot(y) - gs[row] softmax(z[row] * inv_temp))."""
    row = tl.program_id(0).to(tl.int64)
    base = z_ptr + row * stride
    y = tl.load(y_ptr + row)
    lse = tl.load(lse_ptr + row)
    g = tl.load(g_ptr + row) * inv_temp
    gs = tl.load(gs_ptr + row) * inv_temp
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        ok = cols < V
        z = tl.load(base + cols, mask=ok, other=0.0).to(tl.float32) * inv_temp
        p = tl.exp(z - lse)
        dz = tl.where(cols == y, g, 0.0) - gs * p
        tl.store(base + cols, dz.to(z_ptr.dtype.element_ty), mask=ok)


def _block_v(V: int) -> int:
    return min(4096, triton.next_power_of_2(V))


def lse_rows_triton(z, y, temperature, entropy):
    """(lse, label logit, entropy or None), each (n,) float32; ``z`` is left unchanged."""
    n, V = z.shape
    lse = torch.empty(n, dtype=torch.float32, device=z.device)
    zy = torch.empty_like(lse)
    ent = torch.empty_like(lse) if entropy else lse
    _row_lse_kernel[(n,)](
        z, z.stride(0), y, lse, zy, ent, V, 1.0 / temperature, ENTROPY=entropy, BLOCK_V=_block_v(V)
    )
    return lse, zy, (ent if entropy else None)


def grad_rows_triton(z, y, lse, g, temperature, g_softmax=None):
    """dL/dlogits in place of the logits ``z`` (see the module docstring)."""
    n, V = z.shape
    gs = g if g_softmax is None else g_softmax.contiguous()
    _row_grad_kernel[(n,)](z, z.stride(0), y, lse, g, gs, V, 1.0 / temperature, BLOCK_V=_block_v(V))
    return z


# ---------------------------------------------------------------------------------------
# The same two row passes in PyTorch (CPU)
# ---------------------------------------------------------------------------------------
def lse_rows_torch(z, y, temperature, entropy):
    """As :func:`lse_rows_triton`, but ``z`` (float32) becomes softmax(z / temperature)."""
    # In place and without (chunk, V) temporaries: z becomes softmax(z / temperature),
    # which is all the gradient pass needs (5 passes over the buffer in total).
    if temperature != 1.0:
        z.mul_(1.0 / temperature)
    zy = z.gather(1, y.unsqueeze(1)).squeeze(1)
    m = z.amax(dim=1, keepdim=True)
    z.sub_(m).exp_()
    s = z.sum(dim=1, keepdim=True)
    lse = (m + s.log()).squeeze(1)
    z.div_(s)
    ent = None
    if entropy:
        # H = -sum p log p, with 0 log 0 = 0.
        ent = -torch.xlogy(z, z).sum(dim=1)
    return lse, zy, ent


def grad_rows_torch(z, y, lse, g, temperature, g_softmax=None):
    """dL/dlogits in place; ``z`` holds the softmax probabilities from :func:`lse_rows_torch`."""
    inv = 1.0 / temperature
    gs = (g if g_softmax is None else g_softmax) * inv
    z.mul_(gs.neg().unsqueeze(1))
    z.scatter_add_(1, y.unsqueeze(1), (g * inv).unsqueeze(1).to(z.dtype))
    return z


def row_passes(use_triton: bool):
    """``(lse_rows, grad_rows)`` of one implementation."""
    return (lse_rows_triton, grad_rows_triton) if use_triton else (lse_rows_torch, grad_rows_torch)


# ---------------------------------------------------------------------------------------
# The GEMMs around the row passes
# ---------------------------------------------------------------------------------------
def chunk_logits(h: torch.Tensor, w_lp: torch.Tensor, bias: torch.Tensor | None, use_triton: bool) -> torch.Tensor:
    """(chunk, V) logits of ``h`` (chunk, H) against ``w_lp`` (V, H); float32 for the torch
    row passes (they compute in float32, like the references), the GEMM dtype for Triton
    (its kernels widen tile by tile)."""
    z = torch.addmm(bias.to(h.dtype), h, w_lp.t()) if bias is not None else h @ w_lp.t()
    if not use_triton and z.dtype != torch.float32:
        z = z.float()
    return z


def accumulate_chunk_grads(
    dz: torch.Tensor, h: torch.Tensor, w_lp: torch.Tensor, rows: slice, active: torch.Tensor | None,
    dh: torch.Tensor | None, dw: torch.Tensor | None, db: torch.Tensor | None,
) -> None:
    """Write the chunk's dL/dhidden into ``dh`` and add its dL/dweight, dL/dbias.

    Args:
        dz: (chunk, V) dL/dlogits of the chunk; h: (chunk, H) its hidden states.
        w_lp: (V, H) the weight in the GEMM dtype.
        rows: the chunk's slice of the active rows.
        active: (n,) int64 row of each active token in ``dh`` (None: every row is active).
        dh: (N, H) float32 or None; dw: (V, H) float32 or None; db: (V,) float32 or None.
    """
    f32 = torch.float32
    if dh is not None:
        if active is None and w_lp.dtype == f32:
            torch.mm(dz, w_lp, out=dh[rows])
        elif active is None:
            dh[rows].copy_(dz.to(w_lp.dtype) @ w_lp)
        else:
            dh.index_copy_(0, active[rows], (dz.to(w_lp.dtype) @ w_lp).to(f32))
    if dw is not None:
        dw.addmm_(dz.t().to(f32), h.to(f32))
    if db is not None:
        db += dz.sum(0, dtype=f32)
