"""Fused linear cross-entropy: lm_head projection + cross-entropy without (tokens, V) logits.

The loss of CPT, Align and SFT: hidden states (..., H) times the lm_head weight (V, H),
log-softmax, the label's negative log-probability, summed or averaged over the labelled
tokens (label != ``ignore_index``), with an optional z-loss ``z_loss_weight * lse**2``
(Chowdhery et al. 2022, "PaLM", §5; Liger-Kernel's ``lse_square_scale``). Exact
formulas: :mod:`ftib.kernels.reference.linear_ce`; semantics as
``torch.nn.functional.cross_entropy(hidden @ weight.T, labels, ignore_index=-100)``.

Algorithm (the anatomy of :mod:`ftib.kernels.grpo_loss`, with its chunk row passes from
:mod:`ftib.kernels._vocab_chunks`): the labelled tokens are processed in chunks of
``chunk_tokens`` rows. Per chunk one GEMM gives its (chunk, V) logits; a row pass gives
the log-sum-exp and the label's logit; a second row pass turns the buffer in place into
dL/dlogits = w * ((1 + 2 z lse) softmax - onehot) (w = 1, or 1 / #labelled for the mean);
two GEMMs give the chunk's dL/dhidden and add its share of dL/dweight (float32). Peak
extra memory is one (chunk, V) buffer besides the gradients. The backward of each chunk
is thus computed right after its forward, while its logits are at hand, instead of
recomputing them in the autograd backward (a fourth GEMM, +33% time); the loss is a
scalar, so the autograd backward only scales the stored gradients by the incoming
gradient. This is Liger-Kernel's ``LigerFusedLinearCrossEntropyFunction`` strategy too.
Consequence: the op supports one backward per forward (a second raises).

``impl="triton"`` (CUDA; CPU under ``TRITON_INTERPRET=1``) runs the row passes as Triton
kernels streaming over the vocabulary; ``impl="torch"`` (CPU default) runs them as
PyTorch ops on the float32 chunk; ``impl="reference"`` is the eager full-logits
reference. The GEMMs are cuBLAS/MKL through torch in all cases.

Autocast: under an active autocast region the op computes in the autocast dtype, as
autocast's ``F.linear`` would (hidden, weight and bias are cast first; the casts are
differentiable, so float32 master weights get float32 gradients); the op itself then
runs with autocast off.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ftib.kernels._dispatch import FLOAT_DTYPES, check_tensor, resolve_impl
from ftib.kernels._vocab_chunks import ChunkPlan, NeededGrads, OpGrads, VocabChunks, fake_grad_outputs, needed_grads
from ftib.kernels._vocab_chunks import register_stored_grads, resolve_chunk_tokens
from ftib.kernels.reference import linear_ce as reference

_OP = "fused_linear_cross_entropy"
_IMPLS = ("triton", "torch", "reference")
REDUCTIONS = reference.REDUCTIONS


class LinearCEOutput(NamedTuple):
    """loss () float32 (z-loss included; differentiable); z_loss () float32 (detached: the
    z-loss term alone, same reduction; 0 without z-loss)."""

    loss: torch.Tensor
    z_loss: torch.Tensor


class _CEOutputs(NamedTuple):
    """What the op returns (see :func:`_ce_op_fn`)."""

    loss: torch.Tensor  # () float32, z-loss included
    z_loss: torch.Tensor  # () float32
    grads: OpGrads  # of a unit loss, for the backward


def _fused_forward(hidden, weight, bias, labels, *, ignore_index: int, z_loss_weight: float, reduction: str,
                   plan: ChunkPlan) -> _CEOutputs:
    """The chunked loss of ``hidden`` (N, H) against ``labels`` (N,) int64 and, per
    ``plan``, its gradients."""
    V = weight.shape[0]
    dev = hidden.device
    f32 = torch.float32
    keep = labels != ignore_index
    # Inside the op (opaque to torch.compile): a label past the vocabulary would read a
    # wrong logit in the Triton kernels instead of failing.
    bad = keep & ((labels < 0) | (labels >= V))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{_OP}: label {int(labels[i])} at flat position {i} is outside [0, {V}) "
                         f"and is not ignore_index ({ignore_index})")
    chunks = VocabChunks(hidden, weight, bias, keep, plan)
    ys = chunks.take(labels, torch.int64)
    scale = 1.0 / max(chunks.n, 1) if reduction == "mean" else 1.0
    ce_sum = torch.zeros((), dtype=f32, device=dev)
    z_sum = torch.zeros((), dtype=f32, device=dev)
    for c0, c1 in chunks.ranges():
        y = ys[c0:c1]
        h, z, lse, zy, _ = chunks.forward_rows(c0, c1, y, 1.0, False)
        ce_sum += (lse - zy).sum()
        if z_loss_weight:
            z_sum += lse.square().sum()
        if not plan.need.any:
            continue
        # dL/dlogp(label) = -w; the z-loss adds 2 z w lse to the softmax coefficient.
        g = torch.full((c1 - c0,), -scale, dtype=f32, device=dev)
        g_softmax = g * (1.0 + 2.0 * z_loss_weight * lse) if z_loss_weight else None
        chunks.backward_rows(c0, c1, h, z, y, lse, g, 1.0, g_softmax)
        del z
    z_term = z_sum * (z_loss_weight * scale)
    loss = ce_sum * scale + z_term
    return _CEOutputs(loss, z_term, chunks.grad_outputs(hidden))


# ---------------------------------------------------------------------------------------
# Custom op, fake implementation and autograd registration
# ---------------------------------------------------------------------------------------
def _ce_op_fn(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    z_loss_weight: float,
    reduction: str,
    need_dh: bool,
    need_dw: bool,
    need_db: bool,
    chunk_tokens: int,
    impl: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns loss, z_loss, dL/dhidden (N, H), dL/dweight (V, H), dL/dbias (V,) (float32;
    empty where not asked for)."""
    plan = ChunkPlan(NeededGrads(need_dh, need_dw, need_db), chunk_tokens, impl == "triton")
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        out = _fused_forward(hidden, weight, bias, labels, ignore_index=ignore_index, z_loss_weight=z_loss_weight,
                             reduction=reduction, plan=plan)
    return (out.loss, out.z_loss, *out.grads)


_ce_op = torch.library.custom_op("ftib::fused_linear_cross_entropy", mutates_args=())(_ce_op_fn)


@_ce_op.register_fake
def _ce_fake(hidden, weight, bias, labels, ignore_index, z_loss_weight, reduction, need_dh, need_dw, need_db,
             chunk_tokens, impl):
    f32 = torch.float32
    return (
        hidden.new_empty((), dtype=f32),
        hidden.new_empty((), dtype=f32),
        *fake_grad_outputs(hidden, weight, NeededGrads(need_dh, need_dw, need_db)),
    )


register_stored_grads(_ce_op, _ce_op_fn, _OP)


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------
def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    z_loss_weight: float = 0.0,
    reduction: str = "mean",
    chunk_tokens: int | None = None,
    impl: str = "auto",
) -> LinearCEOutput:
    """Cross-entropy of ``labels`` under ``hidden @ weight.T (+ bias)``, without the logits.

    Args:
        hidden: (..., H) float32/bfloat16/float16 last hidden states (any leading shape,
            e.g. (B, T, H); reshaped to (N, H), a copy when not contiguous).
        weight: (V, H) lm_head weight, same dtype as hidden (under autocast both are
            cast to the autocast dtype first).
        labels: (...) int64/int32, hidden's leading shape; ``ignore_index`` = no loss.
            Not shifted here: pass the labels each position predicts.
        bias: (V,) lm_head bias or None.
        ignore_index: label value without loss (default -100, as transformers).
        z_loss_weight: coefficient of the z-loss ``lse**2`` per labelled token (0 = off;
            PaLM used 1e-4).
        reduction: ``"mean"`` over the labelled tokens (0 when there are none) or ``"sum"``.
        chunk_tokens: tokens per chunk; default fits one (chunk, V) float32 buffer in
            128 MiB on CPU, 512 MiB on CUDA.
        impl: ``"auto"`` | ``"triton"`` | ``"torch"`` | ``"reference"``.

    Returns:
        :class:`LinearCEOutput`.

    Raises:
        ValueError/TypeError: a wrong shape, dtype or device (naming the argument), a
            label outside [0, V) other than ``ignore_index``, an unknown reduction.
    """
    op = _OP
    check_tensor(op, "hidden", hidden, dtypes=FLOAT_DTYPES)
    if hidden.dim() < 1:
        raise ValueError(f"{op}: hidden must have at least 1 dim (..., H), got a scalar")
    dev = hidden.device
    H = hidden.shape[-1]
    check_tensor(op, "weight", weight, ndim=2, dtypes=(hidden.dtype,), device=dev, shape=(None, H))
    V = weight.shape[0]
    check_tensor(op, "labels", labels, dtypes=(torch.int64, torch.int32), device=dev)
    if tuple(labels.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"{op}: labels has shape {tuple(labels.shape)}; hidden's leading shape is "
                         f"{tuple(hidden.shape[:-1])}")
    if bias is not None:
        check_tensor(op, "bias", bias, ndim=1, dtypes=FLOAT_DTYPES, device=dev, shape=(V,))
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not (z_loss_weight >= 0 and math.isfinite(z_loss_weight)):
        raise ValueError(f"{op}: z_loss_weight must be finite and >= 0, got {z_loss_weight}")
    labels = labels.reshape(-1).to(torch.int64)
    if torch.is_autocast_enabled(dev.type):
        amp = torch.get_autocast_dtype(dev.type)
        hidden, weight = hidden.to(amp), weight.to(amp)
        bias = None if bias is None else bias.to(amp)
    chosen = resolve_impl(op, impl, dev, cpu_default="torch", choices=_IMPLS)
    if chosen == "reference":
        loss, z = reference.linear_cross_entropy(hidden, weight, labels.view(hidden.shape[:-1]), bias=bias,
                                                 ignore_index=ignore_index, z_loss_weight=z_loss_weight,
                                                 reduction=reduction)
        return LinearCEOutput(loss, z)
    chunk_tokens = resolve_chunk_tokens(op, chunk_tokens, V, dev)
    need = needed_grads(hidden, weight, bias)
    loss, z_loss, _, _, _ = _ce_op(
        hidden.reshape(-1, H), weight, bias, labels, int(ignore_index), float(z_loss_weight), reduction,
        *need, chunk_tokens, chosen,
    )
    return LinearCEOutput(loss, z_loss)
