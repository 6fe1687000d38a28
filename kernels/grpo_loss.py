"""Fused linear GRPO loss: lm_head projection + policy loss without (tokens, V) logits.

Inputs are the policy's last hidden states of the completions, the lm_head weight, the
sampled completion ids and the per-sequence advantages. The loss is the clipped
surrogate of PPO as GRPO uses it (Shao et al. 2024, "DeepSeekMath", eq. 3), with the
k3 KL estimator against a reference policy, an optional per-token importance-sampling
correction (vLLM/inference mismatch), and one of four normalisations (see
:mod:`ftib.kernels.reference.grpo_loss` for the exact formulas and ``docs/kernels.md``):
``grpo`` (per-sequence mean, then batch mean), ``bnpo`` (mean over the batch's tokens),
``dr_grpo`` (Liu et al. 2025: sum / (B * max_completion_length)) and ``dapo`` (Yu et al.
2025: sum / number of tokens of the whole generation batch). The dapo token count is an
explicit argument, ``num_items_in_batch``: a loss averaged over the local micro-batch
instead of the whole generation batch is a classic silent bug, so there is no default.

Algorithm (both implementations): the active tokens (mask != 0) are processed in chunks
of ``chunk_tokens`` rows. For each chunk one GEMM gives its logits (chunk, V); a row pass
computes the log-sum-exp, the chosen-token logit and (optionally) the entropy; the
per-token loss terms and dL/dlogp follow on (chunk,) vectors; a second row pass turns the
logits buffer in place into dL/dlogits = g / temperature * (onehot - softmax); two GEMMs
give dL/dhidden for the chunk and accumulate dL/dweight (float32). Peak extra memory is
one (chunk, V) buffer besides the gradients themselves. The gradients are produced during
the forward when an input needs them: the chunk's logits are at hand then, so the
backward only scales the stored gradients by the incoming scalar gradient instead of
recomputing every logit a second time (that would be a fourth GEMM, +33% time). This is
exact because the loss is a scalar. The backward returns the stored buffers themselves
(no copy, no zero-filled gradients for the op's other outputs; see _grpo_setup_context).

``impl="triton"`` (CUDA) runs the two row passes as Triton kernels that stream over the
vocabulary in BLOCK_V tiles with an online log-sum-exp (Milakov & Gimelshein 2018);
``impl="torch"`` (CPU default) uses PyTorch ops on the chunk; ``impl="reference"`` is the
eager full-logits reference. GEMMs are cuBLAS/MKL through torch in all cases.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ftib.kernels._dispatch import FLOAT_DTYPES, check_tensor, resolve_impl
# The chunk row passes (Triton and PyTorch) are shared with ftib.kernels.linear_ce.
from ftib.kernels._vocab_chunks import default_chunk as _default_chunk
from ftib.kernels._vocab_chunks import grad_rows_torch as _grad_rows_torch
from ftib.kernels._vocab_chunks import grad_rows_triton as _grad_rows_triton
from ftib.kernels._vocab_chunks import lse_rows_torch as _rows_torch
from ftib.kernels._vocab_chunks import lse_rows_triton as _rows_triton
from ftib.kernels.reference import grpo_loss as reference

_OP = "fused_linear_grpo_loss"
_IMPLS = ("triton", "torch", "reference")
LOSS_TYPES = reference.LOSS_TYPES
METRICS = reference.METRICS


class GRPOLossOutput(NamedTuple):
    """loss () float32; metrics name -> () float32 (detached); logps (B, T) float32
    (detached; 0 at masked positions for the fused implementations)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]
    logps: torch.Tensor


# ---------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------
def _token_weights(mask, loss_type, normalizer):
    """w (B, T) float32 so that loss = sum(w * per_token_loss) for each loss type."""
    m = mask.float()
    B, T = m.shape
    if loss_type == "grpo":
        return m / (B * m.sum(1, keepdim=True).clamp(min=1.0))
    if loss_type == "bnpo":
        return m / m.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return m / (B * (normalizer if normalizer > 0 else T))
    return m / normalizer  # dapo


def _token_terms(logp, old, ref, adv, isw, beta, eps_low, eps_high):
    """Per-token loss l and dl/dlogp, the k3 KL and the clip indicators, on (n,) vectors."""
    coef = torch.ones_like(logp) if old is None else torch.exp(logp - old)
    low = (coef < 1 - eps_low) & (adv < 0)
    high = (coef > 1 + eps_high) & (adv > 0)
    region = low | high
    pg = -torch.minimum(coef * adv, coef.clamp(1 - eps_low, 1 + eps_high) * adv)
    # min(r A, clip(r) A) follows the clipped branch exactly in the clip region, where
    # its derivative is 0; elsewhere d(-r A)/dlogp = -r A.
    dpg = torch.where(region, torch.zeros_like(coef), -adv * coef)
    if isw is not None:
        pg = pg * isw
        dpg = dpg * isw
    kl = None
    if beta != 0.0:
        d = ref - logp
        ed = torch.exp(d)
        kl = ed - d - 1.0
        pg = pg + beta * kl
        dpg = dpg + beta * (1.0 - ed)
    return pg, dpg, kl, low, high, region


def _fused_forward(
    hidden, weight, bias, ids, mask, advantages, old_logps, ref_logps, importance_weights,
    beta, eps_low, eps_high, loss_type, normalizer, temperature, compute_entropy,
    need_dh, need_dw, need_db, chunk_tokens, use_triton,
):
    B, T, H = hidden.shape
    V = weight.shape[0]
    dev = hidden.device
    f32 = torch.float32
    w_tok = _token_weights(mask, loss_type, normalizer).reshape(-1)
    m_flat = mask.reshape(-1).float()
    active = (m_flat != 0).nonzero().squeeze(1)
    n = active.numel()
    all_active = n == B * T
    h2 = hidden.reshape(B * T, H)
    hs = h2 if all_active else h2.index_select(0, active)

    def take(x, dtype=f32):
        if x is None:
            return None
        x = x.reshape(-1).to(dtype)
        return x if all_active else x.index_select(0, active)

    ys = take(ids, torch.int64)
    ws = take(w_tok)
    ms = take(m_flat)
    adv_s = take(advantages.to(f32).unsqueeze(1).expand(B, T))
    old_s, ref_s, isw_s = take(old_logps), take(ref_logps), take(importance_weights)

    logp_s = torch.empty(n, dtype=f32, device=dev)
    loss = torch.zeros((), dtype=f32, device=dev)
    sums = torch.zeros(5, dtype=f32, device=dev)  # kl, low, high, region, entropy
    need_grad = need_dh or need_dw or need_db
    # dL/dhidden is written chunk by chunk straight into the op's float32 output
    # (no second (tokens, H) buffer); padded rows stay 0.
    dh = None
    if need_dh:
        dh = (torch.empty if all_active else torch.zeros)(B * T, H, dtype=f32, device=dev)
    dw = torch.zeros(V, H, dtype=f32, device=dev) if need_dw else None
    db = torch.zeros(V, dtype=f32, device=dev) if need_db else None
    w_lp = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)

    rows, grad_rows = (_rows_triton, _grad_rows_triton) if use_triton else (_rows_torch, _grad_rows_torch)
    for c0 in range(0, n, chunk_tokens):
        c1 = min(n, c0 + chunk_tokens)
        h = hs[c0:c1]
        y = ys[c0:c1]
        z = torch.addmm(bias.to(h.dtype), h, w_lp.t()) if bias is not None else h @ w_lp.t()
        if not use_triton and z.dtype != f32:
            z = z.float()  # the torch row passes work in float32, like the reference
        lse, zy, ent = rows(z, y, temperature, compute_entropy)
        logp = zy - lse
        logp_s[c0:c1] = logp
        sl = slice(c0, c1)
        pg, dpg, kl, low, high, region = _token_terms(
            logp, None if old_s is None else old_s[sl], None if ref_s is None else ref_s[sl],
            adv_s[sl], None if isw_s is None else isw_s[sl], beta, eps_low, eps_high,
        )
        mc = ms[sl]
        loss += (ws[sl] * pg).sum()
        if kl is not None:
            sums[0] += (kl * mc).sum()
        sums[1] += (low.float() * mc).sum()
        sums[2] += (high.float() * mc).sum()
        sums[3] += (region.float() * mc).sum()
        if ent is not None:
            sums[4] += (ent * mc).sum()
        if not need_grad:
            continue
        g = (ws[sl] * dpg).contiguous()
        dz = grad_rows(z, y, lse, g, temperature)
        if need_dh:
            if all_active and w_lp.dtype == f32:
                torch.mm(dz, w_lp, out=dh[c0:c1])
            elif all_active:
                dh[c0:c1].copy_(dz.to(w_lp.dtype) @ w_lp)
            else:
                dh.index_copy_(0, active[c0:c1], (dz.to(w_lp.dtype) @ w_lp).to(f32))
        if need_dw:
            dw.addmm_(dz.t().to(f32), h.to(f32))
        if need_db:
            db += dz.sum(0, dtype=f32)
        del z, dz

    metrics = sums / m_flat.sum().clamp(min=1.0)
    if not compute_entropy:
        metrics[4] = float("nan")
    logps = torch.zeros(B * T, dtype=f32, device=dev)
    logps.index_copy_(0, active, logp_s)
    # Distinct empty tensors: a custom op's outputs must not alias each other.
    def empty():
        return hidden.new_empty(0, dtype=f32)

    dh = dh.view(B, T, H) if need_dh else empty()
    return (
        loss, metrics, logps.view(B, T), dh,
        dw if need_dw else empty(), db if need_db else empty(),
    )


# ---------------------------------------------------------------------------------------
# Custom op, fake implementation and autograd registration
# ---------------------------------------------------------------------------------------
@torch.library.custom_op("ftib::fused_linear_grpo_loss", mutates_args=())
def _grpo_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    ids: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    old_logps: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    importance_weights: torch.Tensor | None,
    beta: float,
    epsilon_low: float,
    epsilon_high: float,
    loss_type: str,
    normalizer: float,
    temperature: float,
    compute_entropy: bool,
    need_dh: bool,
    need_dw: bool,
    need_db: bool,
    chunk_tokens: int,
    impl: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns loss, metrics (5,), logps (B, T), dL/dhidden, dL/dweight, dL/dbias
    (float32; empty where not asked for)."""
    with torch.no_grad():
        return _fused_forward(
            hidden, weight, bias, ids, mask, advantages, old_logps, ref_logps,
            importance_weights, beta, epsilon_low, epsilon_high, loss_type, normalizer,
            temperature, compute_entropy, need_dh, need_dw, need_db, chunk_tokens,
            impl == "triton",
        )


@_grpo_op.register_fake
def _grpo_fake(hidden, weight, bias, ids, mask, advantages, old_logps, ref_logps,
               importance_weights, beta, epsilon_low, epsilon_high, loss_type, normalizer,
               temperature, compute_entropy, need_dh, need_dw, need_db, chunk_tokens, impl):
    B, T, H = hidden.shape
    V = weight.shape[0]
    f32 = torch.float32
    return (
        hidden.new_empty((), dtype=f32),
        hidden.new_empty(5, dtype=f32),
        hidden.new_empty(B, T, dtype=f32),
        hidden.new_empty((B, T, H) if need_dh else (0,), dtype=f32),
        hidden.new_empty((V, H) if need_dw else (0,), dtype=f32),
        hidden.new_empty((V,) if need_db else (0,), dtype=f32),
    )


def _grpo_setup_context(ctx, inputs, output):
    hidden, weight, bias = inputs[0], inputs[1], inputs[2]
    _, metrics, logps, dh, dw, db = output
    ctx.save_for_backward(dh, dw, db)
    ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
    ctx.need = inputs[16:19]
    ctx.consumed = False
    ctx.mark_non_differentiable(metrics, logps, dh, dw, db)
    # The outputs other than the loss never receive a gradient. By default autograd
    # would materialise zeros for them before calling the backward, among them a
    # zero (V, H) float32 tensor as large as dL/dW itself (594 MiB at V = 151,936,
    # H = 1,024), allocated and zeroed right before the backward.
    ctx.set_materialize_grads(False)


def _grpo_backward(ctx, g_loss, *unused):
    # The stored gradients are scaled in place: a second copy of dL/dweight would double
    # the op's peak memory. So the backward may run once (like a graph without
    # retain_graph); a second call raises instead of returning twice-scaled gradients.
    if ctx.consumed:
        raise RuntimeError(f"{_OP}: backward ran twice; this op supports a single backward")
    ctx.consumed = True
    grads = [None] * 21
    if g_loss is None:  # no gradient reached the loss (grads are not materialised)
        return tuple(grads)
    dh, dw, db = ctx.saved_tensors
    need_dh, need_dw, need_db = ctx.need
    h_t, w_t, b_t = ctx.dtypes
    for i, (buf, needed, dtype, name) in enumerate(
        ((dh, need_dh, h_t, "hidden"), (dw, need_dw, w_t, "weight"), (db, need_db, b_t, "bias"))
    ):
        if not ctx.needs_input_grad[i]:
            continue
        if not needed:
            raise RuntimeError(f"{_OP}: {name} started requiring grad after the forward")
        grads[i] = buf.mul_(g_loss).to(dtype)
    return tuple(grads)


_grpo_op.register_autograd(_grpo_backward, setup_context=_grpo_setup_context)


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------
def fused_linear_grpo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    advantages: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    old_logps: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    importance_weights: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "dapo",
    num_items_in_batch: float | None = None,
    max_completion_length: int | None = None,
    temperature: float = 1.0,
    compute_entropy: bool = False,
    chunk_tokens: int | None = None,
    impl: str = "auto",
) -> GRPOLossOutput:
    """GRPO policy loss over the lm_head projection, without (tokens, V) logits.

    Args:
        hidden: (B*G, T, H) float32/bfloat16/float16 last hidden states of the completions.
        weight: (V, H) lm_head weight, same dtype as hidden.
        completion_ids: (B*G, T) int64 sampled token ids.
        completion_mask: (B*G, T) bool/int/float; 0 marks padding.
        advantages: (B*G,) per-sequence advantages (see ftib.kernels.advantages).
        bias: (V,) lm_head bias or None.
        old_logps: (B*G, T) log-probs of the sampling policy; None when the policy has not
            moved since sampling (num_iterations == 1): the ratio is then 1 with gradient 1.
        ref_logps: (B*G, T) log-probs of the reference policy; required when beta != 0.
        importance_weights: (B*G, T) per-token correction multiplying the policy term
            (e.g. TRL's vLLM importance-sampling ratio) or None.
        beta: KL coefficient.
        epsilon_low, epsilon_high: clip range [1 - eps_low, 1 + eps_high]; epsilon_high
            defaults to epsilon_low (DAPO's clip-higher uses e.g. 0.28).
        loss_type: ``"grpo"`` | ``"bnpo"`` | ``"dr_grpo"`` | ``"dapo"``.
        num_items_in_batch: dapo only, required: number of completion tokens the loss is
            averaged over (whole generation batch, per process).
        max_completion_length: dr_grpo's constant L (default T).
        temperature: the sampling temperature; logits are divided by it.
        compute_entropy: also return the mean token entropy (one more row pass).
        chunk_tokens: tokens per chunk; default fits one (chunk, V) float32 buffer in
            128 MiB on CPU, 512 MiB on CUDA.
        impl: ``"auto"`` | ``"triton"`` | ``"torch"`` | ``"reference"``.

    Returns:
        :class:`GRPOLossOutput`; metrics: kl, clip_ratio_low, clip_ratio_high,
        clip_ratio_region (token means over the mask, as TRL logs them) and entropy
        (when asked).
    """
    op = _OP
    check_tensor(op, "hidden", hidden, ndim=3, dtypes=FLOAT_DTYPES)
    dev = hidden.device
    B, T, H = hidden.shape
    check_tensor(op, "weight", weight, ndim=2, dtypes=(hidden.dtype,), device=dev, shape=(None, H))
    V = weight.shape[0]
    check_tensor(op, "completion_ids", completion_ids, ndim=2, dtypes=(torch.int64, torch.int32),
                 device=dev, shape=(B, T))
    check_tensor(op, "completion_mask", completion_mask, ndim=2, device=dev, shape=(B, T))
    check_tensor(op, "advantages", advantages, ndim=1, dtypes=FLOAT_DTYPES, device=dev, shape=(B,))
    if bias is not None:
        check_tensor(op, "bias", bias, ndim=1, dtypes=FLOAT_DTYPES, device=dev, shape=(V,))
    for name, t in (("old_logps", old_logps), ("ref_logps", ref_logps),
                    ("importance_weights", importance_weights)):
        if t is not None:
            check_tensor(op, name, t, ndim=2, dtypes=FLOAT_DTYPES, device=dev, shape=(B, T))
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"{op}: loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if beta != 0.0 and ref_logps is None:
        raise ValueError(f"{op}: ref_logps is required when beta != 0 (beta={beta})")
    eps_high = epsilon_low if epsilon_high is None else epsilon_high
    if not (0 <= epsilon_low < 1 and eps_high >= 0):
        raise ValueError(f"{op}: need 0 <= epsilon_low < 1 and epsilon_high >= 0")
    if temperature <= 0 or not math.isfinite(temperature):
        raise ValueError(f"{op}: temperature must be > 0, got {temperature}")
    normalizer = 0.0
    if loss_type == "dapo":
        if num_items_in_batch is None or not num_items_in_batch > 0:
            raise ValueError(
                f"{op}: loss_type='dapo' needs num_items_in_batch > 0, the number of "
                f"completion tokens of the whole generation batch (got {num_items_in_batch})"
            )
        normalizer = float(num_items_in_batch)
    elif num_items_in_batch is not None:
        raise ValueError(f"{op}: num_items_in_batch is dapo's normaliser; loss_type={loss_type!r}")
    if loss_type == "dr_grpo" and max_completion_length is not None:
        if max_completion_length < 1:
            raise ValueError(f"{op}: max_completion_length must be >= 1")
        normalizer = float(max_completion_length)
    chosen = resolve_impl(op, impl, dev, cpu_default="torch", choices=_IMPLS)
    if chosen == "reference":
        loss, metrics, logps = reference.fused_linear_grpo_loss(
            hidden, weight, completion_ids, completion_mask, advantages, bias=bias,
            old_logps=old_logps, ref_logps=ref_logps, importance_weights=importance_weights,
            beta=beta, epsilon_low=epsilon_low, epsilon_high=eps_high, loss_type=loss_type,
            num_items_in_batch=num_items_in_batch, max_completion_length=max_completion_length,
            temperature=temperature, compute_entropy=compute_entropy,
        )
        return GRPOLossOutput(loss, {k: v.detach() for k, v in metrics.items()}, logps.detach())
    if chunk_tokens is None:
        chunk_tokens = _default_chunk(V, 4, dev)
    if chunk_tokens < 1:
        raise ValueError(f"{op}: chunk_tokens must be >= 1, got {chunk_tokens}")
    grad_on = torch.is_grad_enabled()
    need_dh = grad_on and hidden.requires_grad
    need_dw = grad_on and weight.requires_grad
    need_db = grad_on and bias is not None and bias.requires_grad
    loss, metrics, logps, _, _, _ = _grpo_op(
        hidden, weight, bias, completion_ids.to(torch.int64), completion_mask, advantages,
        old_logps, ref_logps, importance_weights, float(beta), float(epsilon_low),
        float(eps_high), loss_type, normalizer, float(temperature), bool(compute_entropy),
        need_dh, need_dw, need_db, int(chunk_tokens), chosen,
    )
    names = METRICS if compute_entropy else METRICS[:4]
    return GRPOLossOutput(loss, {k: metrics[i] for i, k in enumerate(names)}, logps)
