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

Around the row passes, both ops share the rest of their plumbing here too:
:class:`VocabChunks` (the active rows, the chunk loop, the gradient buffers and the op's
gradient outputs), :func:`needed_grads` and :func:`resolve_chunk_tokens` (the public
wrappers' share), and :func:`register_stored_grads` (the fake outputs' gradient part and
the autograd registration: the gradients are computed in the forward, while each chunk's
logits are at hand, and the backward only scales them by the incoming scalar gradient).

Two implementations of the row passes with the same contract: Triton kernels streaming
over the vocabulary in BLOCK_V tiles with an online log-sum-exp (Milakov & Gimelshein
2018, "Online normalizer calculation for softmax"), and PyTorch ops on the chunk (CPU),
which turn ``z`` into ``softmax(z / T)`` in place during the first pass.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import NamedTuple, overload

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
    # In place: z becomes softmax(z / temperature), which is all the gradient pass needs
    # (5 passes over the buffer, no (chunk, V) temporary unless the entropy is asked).
    if temperature != 1.0:
        z.mul_(1.0 / temperature)
    zy = z.gather(1, y.unsqueeze(1)).squeeze(1)
    m = z.amax(dim=1, keepdim=True)
    z.sub_(m)  # t = z / temperature - max, <= 0
    if not entropy:
        z.exp_()
        s = z.sum(dim=1, keepdim=True)
        lse = (m + s.log()).squeeze(1)
        z.div_(s)
        return lse, zy, None
    # H = -sum p log p = log s - sum(e t) / s with e = exp(t), s = sum e: the streaming
    # form of the Triton kernel, without a log per element (torch.xlogy over the buffer
    # cost ~7x the rest of this function on CPU). e t is 0 where e underflows.
    e = torch.exp(z)
    s = e.sum(dim=1, keepdim=True)
    log_s = s.log()
    et = z.mul_(e).sum(dim=1, keepdim=True)
    torch.div(e, s, out=z)
    return (m + log_s).squeeze(1), zy, (log_s - et / s).squeeze(1)


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


# ---------------------------------------------------------------------------------------
# The chunk loop and its gradient buffers
# ---------------------------------------------------------------------------------------
class NeededGrads(NamedTuple):
    """Which of the op's GEMM inputs get a gradient computed in the forward."""

    dh: bool
    dw: bool
    db: bool

    @property
    def any(self) -> bool:
        return self.dh or self.dw or self.db


def needed_grads(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> NeededGrads:
    """The gradients the autograd graph will ask for, decided before the op runs."""
    on = torch.is_grad_enabled()
    return NeededGrads(on and hidden.requires_grad, on and weight.requires_grad,
                       on and bias is not None and bias.requires_grad)


def resolve_chunk_tokens(op: str, chunk_tokens: int | None, V: int, device: torch.device) -> int:
    """``chunk_tokens`` or, when None, :func:`default_chunk` for a float32 (chunk, V) buffer."""
    if chunk_tokens is None:
        chunk_tokens = default_chunk(V, 4, device)
    if chunk_tokens < 1:
        raise ValueError(f"{op}: chunk_tokens must be >= 1, got {chunk_tokens}")
    return int(chunk_tokens)


class ChunkPlan(NamedTuple):
    """How a fused linear loss op runs its chunks: the gradients it computes, the rows
    per chunk and which row passes (Triton or PyTorch)."""

    need: NeededGrads
    chunk_tokens: int
    use_triton: bool


class OpGrads(NamedTuple):
    """The gradient outputs of a fused linear loss op (float32; empty where not computed)."""

    dh: torch.Tensor  # shaped as the op's hidden input
    dw: torch.Tensor  # (V, H)
    db: torch.Tensor  # (V,)


class VocabChunks:
    """The active rows of a fused linear loss, processed ``chunk_tokens`` at a time
    against the lm_head, and the float32 gradient buffers the chunks write into.

    Args:
        hidden: (N, H) hidden states of every row (GEMM dtype).
        weight: (V, H) lm_head weight, hidden's dtype; bias: (V,) or None.
        keep: (N,) bool, the rows with a loss term (the others get no logits and a zero
            dL/dhidden).
        plan: the gradient buffers to allocate (``plan.need``), rows per chunk, Triton
            row passes (else PyTorch on float32 chunks).

    Attributes:
        active: (n,) int64 rows of ``keep`` in ``hidden``; ``all_active`` when n == N.
        hs: (n, H) the active rows.
        dh: (N, H) float32 or None (dL/dhidden, written chunk by chunk; inactive rows stay
            0); dw: (V, H) float32 or None; db: (V,) float32 or None (accumulated).
    """

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, keep: torch.Tensor,
                 plan: ChunkPlan) -> None:
        N, H = hidden.shape
        V = weight.shape[0]
        dev, f32 = hidden.device, torch.float32
        need = plan.need
        self.weight, self.bias, self.need = weight, bias, need
        self.chunk_tokens, self.use_triton = plan.chunk_tokens, plan.use_triton
        self.active = keep.nonzero().squeeze(1)
        self.n = self.active.numel()
        self.all_active = self.n == N
        self.hs = hidden if self.all_active else hidden.index_select(0, self.active)
        # dL/dhidden goes straight into the op's float32 output (no second (N, H) buffer).
        self.dh = (torch.empty if self.all_active else torch.zeros)(N, H, dtype=f32, device=dev) if need.dh else None
        self.dw = torch.zeros(V, H, dtype=f32, device=dev) if need.dw else None
        self.db = torch.zeros(V, dtype=f32, device=dev) if need.db else None
        self.lse_rows, self.grad_rows = row_passes(plan.use_triton)

    @overload
    def take(self, x: torch.Tensor, dtype: torch.dtype = ...) -> torch.Tensor: ...
    @overload
    def take(self, x: None, dtype: torch.dtype = ...) -> None: ...
    @overload
    def take(self, x: torch.Tensor | None, dtype: torch.dtype = ...) -> torch.Tensor | None: ...

    def take(self, x: torch.Tensor | None, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """(n,) the active rows of a per-row input (any shape flattening to (N,)), or None."""
        if x is None:
            return None
        x = x.reshape(-1).to(dtype)
        return x if self.all_active else x.index_select(0, self.active)

    def ranges(self) -> Iterator[tuple[int, int]]:
        """Row ranges [c0, c1) of the active rows, one (chunk, V) logits buffer each."""
        for c0 in range(0, self.n, self.chunk_tokens):
            yield c0, min(self.n, c0 + self.chunk_tokens)

    def forward_rows(self, c0: int, c1: int, y: torch.Tensor, temperature: float, entropy: bool):
        """The chunk's logits and first row pass.

        Returns:
            (h (chunk, H), z (chunk, V) buffer for :meth:`backward_rows`, lse, label logit,
            entropy or None), the last three (chunk,) float32 of ``z / temperature``.
        """
        h = self.hs[c0:c1]
        z = chunk_logits(h, self.weight, self.bias, self.use_triton)
        lse, zy, ent = self.lse_rows(z, y, temperature, entropy)
        return h, z, lse, zy, ent

    def backward_rows(self, c0: int, c1: int, h: torch.Tensor, z: torch.Tensor, y: torch.Tensor,
                      lse: torch.Tensor, g: torch.Tensor, temperature: float,
                      g_softmax: torch.Tensor | None = None) -> None:
        """Turn ``z`` into dL/dlogits (:func:`grad_rows_torch` for ``g``, ``g_softmax``) and
        accumulate the chunk's gradients into the buffers."""
        dz = self.grad_rows(z, y, lse, g.contiguous(), temperature, g_softmax)
        accumulate_chunk_grads(dz, h, self.weight, slice(c0, c1), None if self.all_active else self.active,
                               self.dh, self.dw, self.db)

    def grad_outputs(self, like: torch.Tensor) -> OpGrads:
        """(dL/dhidden shaped as ``like``, dL/dweight, dL/dbias) for the op's outputs, a
        distinct empty float32 tensor for each one not computed (a custom op's outputs
        must not alias each other)."""

        def empty():
            return like.new_empty(0, dtype=torch.float32)

        return OpGrads(self.dh.view(like.shape) if self.dh is not None else empty(),
                       self.dw if self.dw is not None else empty(),
                       self.db if self.db is not None else empty())


def fake_grad_outputs(hidden: torch.Tensor, weight: torch.Tensor, need: NeededGrads) -> OpGrads:
    """The fake (meta) tensors of :meth:`VocabChunks.grad_outputs`."""
    f32 = torch.float32
    return OpGrads(hidden.new_empty(tuple(hidden.shape) if need.dh else (0,), dtype=f32),
                   hidden.new_empty(tuple(weight.shape) if need.dw else (0,), dtype=f32),
                   hidden.new_empty((weight.shape[0],) if need.db else (0,), dtype=f32))


# ---------------------------------------------------------------------------------------
# Autograd: gradients computed in the forward, scaled in the backward
# ---------------------------------------------------------------------------------------
def register_stored_grads(op, fn: Callable, name: str) -> None:
    """Register the autograd formula of a fused linear loss op built from ``fn``.

    ``fn``'s parameters start with ``hidden, weight, bias`` and hold ``need_dh, need_dw,
    need_db`` in a row; its outputs are ``(loss, *non-differentiable, dh, dw, db)`` with
    the gradients of a unit loss (:meth:`VocabChunks.grad_outputs`). The backward
    returns them scaled by the loss's incoming gradient, in the inputs' dtypes.
    """
    params = list(inspect.signature(fn).parameters)
    at = params.index("need_dh")
    if params[:3] != ["hidden", "weight", "bias"] or params[at:at + 3] != ["need_dh", "need_dw", "need_db"]:
        raise TypeError(f"{name}: {fn.__name__} must take hidden, weight, bias first and need_dh, need_dw, "
                        f"need_db in a row, got {params}")
    n_inputs = len(params)

    def setup_context(ctx, inputs, output):
        hidden, weight, bias = inputs[0], inputs[1], inputs[2]
        dh, dw, db = output[-3:]
        ctx.save_for_backward(dh, dw, db)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.need = inputs[at:at + 3]
        ctx.consumed = False
        ctx.mark_non_differentiable(*output[1:])
        # The outputs other than the loss never receive a gradient. By default autograd
        # would materialise zeros for them before calling the backward, among them a
        # zero (V, H) float32 tensor as large as dL/dW itself (594 MiB at V = 151,936,
        # H = 1,024), allocated and zeroed right before the backward.
        ctx.set_materialize_grads(False)

    def backward(ctx, g_loss, *unused):
        # The stored gradients are scaled in place: a second copy of dL/dweight would
        # double the op's peak memory. So the backward may run once (like a graph without
        # retain_graph); a second call raises instead of returning twice-scaled gradients.
        if ctx.consumed:
            raise RuntimeError(f"{name}: backward ran twice; this op supports a single backward")
        ctx.consumed = True
        grads: list[torch.Tensor | None] = [None] * n_inputs
        if g_loss is None:  # no gradient reached the loss (grads are not materialised)
            return tuple(grads)
        for i, (buf, needed, dtype, arg) in enumerate(zip(ctx.saved_tensors, ctx.need, ctx.dtypes,
                                                         ("hidden", "weight", "bias"))):
            if not ctx.needs_input_grad[i]:
                continue
            if not needed:
                raise RuntimeError(f"{name}: {arg} started requiring grad after the forward")
            grads[i] = buf.mul_(g_loss).to(dtype)
        return tuple(grads)

    op.register_autograd(backward, setup_context=setup_context)
