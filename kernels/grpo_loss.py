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
(no copy, no zero-filled gradients for the op's other outputs; see
:func:`ftib.kernels._vocab_chunks.register_stored_grads`).

``impl="triton"`` (CUDA) runs the two row passes as Triton kernels that stream over the
vocabulary in BLOCK_V tiles with an online log-sum-exp (Milakov & Gimelshein 2018);
``impl="torch"`` (CPU default) uses PyTorch ops on the chunk; ``impl="reference"`` is the
eager full-logits reference. GEMMs are cuBLAS/MKL through torch in all cases.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch

from ftib.kernels._dispatch import FLOAT_DTYPES, check_tensor, resolve_impl
# The chunk loop, its row passes (Triton and PyTorch) and the autograd plumbing are
# shared with ftib.kernels.linear_ce.
from ftib.kernels._vocab_chunks import ChunkPlan, NeededGrads, OpGrads, VocabChunks, fake_grad_outputs, needed_grads
from ftib.kernels._vocab_chunks import register_stored_grads, resolve_chunk_tokens
from ftib.kernels.reference import grpo_loss as reference

_OP = "fused_linear_grpo_loss"
_IMPLS = ("triton", "torch", "reference")
LOSS_TYPES = reference.LOSS_TYPES
METRICS = reference.METRICS
# Loss types whose token sum is divided by the caller's num_items_in_batch (TRL line 3168).
SUM_NORMALISED = ("dapo", "cispo", "vespo")


class GRPOLossOutput(NamedTuple):
    """loss () float32; metrics name -> () float32 (detached); logps (B, T) float32
    (detached; 0 at masked positions for the fused implementations)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]
    logps: torch.Tensor


# ---------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------
class Objective(NamedTuple):
    """The scalars of one GRPO objective (see :mod:`ftib.kernels.reference.grpo_loss`)."""

    loss_type: str
    importance_sampling_level: str  # "token" | "sequence"
    beta: float
    epsilon_low: float
    epsilon_high: float
    delta: float  # two-sided clip cap on the ratio; inf when off (clamp(max=inf) is the identity)
    use_bias_correction_kl: bool
    sapo_temperatures: tuple[float, float]  # (positive A, non-positive A)
    vespo_params: tuple[float, float, float, float]  # k_pos, lambda_pos, k_neg, lambda_neg


class _Tokens(NamedTuple):
    """Per-token inputs of the objective on n active tokens, (n,) float32 unless noted."""

    logp: torch.Tensor
    old: torch.Tensor | None
    ref: torch.Tensor | None
    adv: torch.Tensor
    isw: torch.Tensor | None
    w: torch.Tensor  # aggregation weight: loss = sum(w * l)
    m: torch.Tensor  # mask value
    seq: torch.Tensor  # (n,) int64 completion index
    phi: torch.Tensor | None  # vespo's detached per-token phi of its sequence


class _Terms(NamedTuple):
    loss: torch.Tensor  # () sum of w * l over the tokens
    g: torch.Tensor  # (n,) dL/dlogp
    kl_sum: torch.Tensor  # () sum of m * kl
    clip_sums: torch.Tensor  # (4,) low, high, region, cispo: sums of m * indicator (token level)
    #  or, at the sequence level, sums over all B completions of the (B,) indicators


def _token_weights(mask, loss_type, normalizer):
    """w (B, T) float32 so that loss = sum(w * per_token_loss) for each loss type."""
    m = mask.float()
    B, T = m.shape
    if loss_type in ("grpo", "sapo"):
        return m / (B * m.sum(1, keepdim=True).clamp(min=1.0))
    if loss_type == "bnpo":
        return m / m.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return m / (B * (normalizer if normalizer > 0 else T))
    if loss_type == "luspo":
        return m / B
    return m / normalizer  # dapo, cispo, vespo


def _objective_terms(x: _Tokens, obj: Objective, inv_len: torch.Tensor, adv_seq: torch.Tensor) -> _Terms:
    """Per-token loss terms and dL/dlogp, derived by hand from TRL 1.16's autograd graph
    (``GRPOTrainer._compute_loss``, grpo_trainer.py lines 3083-3184; the formulas are in
    :mod:`ftib.kernels.reference.grpo_loss`).

    The loss is l_t(logp_t, s_t): a local dependence on logp_t (cispo/vespo's logp
    factor, the KL) and one through the log importance weight s. At the token level
    ds_t/dlogp_t = 1; at the sequence level s_i = sum_t lr_t m_t / n_i, so every token of
    completion i also receives m_t / n_i * sum_t' w_t' dl_t'/ds_i: the sequence-level
    terms need the whole completion's log-probs, which is why the caller runs them over
    all tokens at once (see _fused_forward). ``inv_len`` (B,) = 1 / max(1, n_i) and
    ``adv_seq`` (B,) are used at the sequence level only.
    """
    lt, level = obj.loss_type, obj.importance_sampling_level
    el, eh = obj.epsilon_low, obj.epsilon_high
    adv, logp = x.adv, x.logp
    lr = torch.zeros_like(logp) if x.old is None else logp - x.old
    if level == "sequence":
        B = inv_len.shape[0]
        s_seq = torch.zeros(B, dtype=logp.dtype, device=logp.device).index_add_(0, x.seq, lr * x.m) * inv_len
        s = s_seq[x.seq]
    else:
        s = lr
    c = torch.exp(s)
    zero = torch.zeros_like(logp)
    c1 = c
    if lt == "cispo":
        cc = c.clamp(max=eh)
        p, dp_loc, dp_s = -cc * adv * logp, -cc * adv, zero
    elif lt in reference.CLIPPED_LOSS_TYPES:
        c2 = c.clamp(1 - el, 1 + eh)
        dc2 = ((c >= 1 - el) & (c <= 1 + eh)).float()
        c1 = c.clamp(max=obj.delta)
        dc1 = (c <= obj.delta).float()
        a, b = c1 * adv, c2 * adv
        p = -torch.minimum(a, b)
        # torch.minimum's backward: the smaller input takes the gradient, a tie splits it.
        tie = (a == b).float() * 0.5
        wa = (a < b).float() + tie
        wb = (b < a).float() + tie
        dp_loc, dp_s = zero, -(wa * dc1 + wb * dc2) * adv * c
    elif lt == "sapo":
        tp, tn = obj.sapo_temperatures
        tau = torch.where(adv > 0, tp, tn)
        sg = torch.sigmoid(tau * (c - 1))
        p, dp_loc, dp_s = -sg * 4 / tau * adv, zero, -adv * 4 * sg * (1 - sg) * c
    else:  # vespo
        assert x.phi is not None  # computed above for vespo
        p, dp_loc, dp_s = -x.phi * adv * logp, -x.phi * adv, zero
    if x.isw is not None and lt != "vespo":
        p, dp_loc, dp_s = p * x.isw, dp_loc * x.isw, dp_s * x.isw
    kl_sum = logp.new_zeros(())
    if obj.beta != 0.0:
        assert x.ref is not None  # the op checks ref_logps is given when beta != 0
        d = x.ref - logp
        ed = torch.exp(d)
        kl, dkl = ed - d - 1.0, 1.0 - ed
        if obj.use_bias_correction_kl:
            kl, dkl, dkl_s = kl * c, dkl * c, kl * c
            dp_s = dp_s + obj.beta * dkl_s
        p = p + obj.beta * kl
        dp_loc = dp_loc + obj.beta * dkl
        kl_sum = (kl * x.m).sum()
    loss = (x.w * p).sum()
    if level == "sequence":
        through_s = torch.zeros_like(inv_len).index_add_(0, x.seq, x.w * dp_s)
        g = x.w * dp_loc + (through_s * inv_len)[x.seq] * x.m
        # TRL's metrics of (B, 1) quantities average over all B completions (one with no
        # tokens has s = 0).
        c_seq = torch.exp(s_seq)
        c1_seq = c_seq.clamp(max=obj.delta) if lt in reference.CLIPPED_LOSS_TYPES else c_seq
        ind = _clip_indicators(c_seq, c1_seq, adv_seq, el, eh)
        clip_sums = ind.sum(1)
    else:
        g = x.w * (dp_loc + dp_s)
        clip_sums = (_clip_indicators(c, c1, adv, el, eh) * x.m).sum(1)
    return _Terms(loss, g, kl_sum, clip_sums)


def _clip_indicators(c, c1, adv, el, eh):
    """(4, n) float: TRL's clip_ratio low/high/region on the (delta-capped) ratio c1 and
    cispo's clip indicator on the uncapped c (grpo_trainer.py lines 3272-3286)."""
    low = (c1 < 1 - el) & (adv < 0)
    high = (c1 > 1 + eh) & (adv > 0)
    return torch.stack([low, high, low | high, (c > eh) & (adv > 0)]).float()


class _Completions(NamedTuple):
    """The sampled completions the loss is computed on."""

    ids: torch.Tensor  # (B, T) int64
    mask: torch.Tensor  # (B, T); 0 marks padding
    advantages: torch.Tensor  # (B,)
    old_logps: torch.Tensor | None  # (B, T) log-probs of the sampling policy
    ref_logps: torch.Tensor | None  # (B, T) of the reference policy
    importance_weights: torch.Tensor | None  # (B, T)


class _GRPOOutputs(NamedTuple):
    """What the op returns (see :func:`_grpo_op_fn`)."""

    loss: torch.Tensor  # () float32
    metrics: torch.Tensor  # (len(METRICS),) float32, NaN where not computed
    logps: torch.Tensor  # (B, T) float32, 0 at masked positions
    grads: OpGrads  # of a unit loss, for the backward


def _fused_forward(hidden, weight, bias, x: _Completions, *, obj: Objective, normalizer: float, temperature: float,
                   compute_entropy: bool, plan: ChunkPlan) -> _GRPOOutputs:
    """The chunked loss of ``hidden`` (B, T, H) on the completions ``x`` and, per
    ``plan``, its gradients."""
    ids, mask, advantages, old_logps, ref_logps, importance_weights = x
    need = plan.need
    B, T, H = hidden.shape
    dev = hidden.device
    f32 = torch.float32
    lt = obj.loss_type
    w_tok = _token_weights(mask, lt, normalizer).reshape(-1)
    m2 = mask.float()
    m_flat = m2.reshape(-1)
    w_lp = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
    chunks = VocabChunks(hidden.reshape(B * T, H), w_lp, bias, m_flat != 0, plan)
    n, active, take = chunks.n, chunks.active, chunks.take

    adv_seq = advantages.to(f32)
    inv_len = 1.0 / m2.sum(1).clamp(min=1.0)
    ys = take(ids, torch.int64)
    seq_s = active // T
    ws, ms = take(w_tok), take(m_flat)
    adv_s = adv_seq[seq_s]
    old_s, ref_s, isw_s = take(old_logps), take(ref_logps), take(importance_weights)
    vespo_is = None
    if lt == "vespo" and importance_weights is not None:
        # TRL sums the clamped log IS ratios over all T positions, padding included.
        vespo_is = torch.clamp(torch.log(importance_weights.float()), math.log(1e-8), 20.0).sum(-1)
    # Sequence statistics of the current log-probs (GSPO's mean log-ratio, VESPO's summed
    # one) are needed before any token's gradient: compute every log-prob first, then the
    # gradients in a second pass that recomputes each chunk's logits (one more GEMM).
    two_pass = obj.importance_sampling_level == "sequence" or (lt == "vespo" and old_logps is not None)

    logp_s = torch.empty(n, dtype=f32, device=dev)
    loss = torch.zeros((), dtype=f32, device=dev)
    kl_sum = torch.zeros((), dtype=f32, device=dev)
    ent_sum = torch.zeros((), dtype=f32, device=dev)
    clip_sums = torch.zeros(4, dtype=f32, device=dev)

    def logits_rows(c0, c1, entropy):
        h, z, lse, zy, ent = chunks.forward_rows(c0, c1, ys[c0:c1], temperature, entropy)
        return h, z, lse, zy - lse, ent

    def tokens(sl, logp):
        def part(x):
            return None if x is None else x[sl]

        phi = None
        if lt == "vespo":  # single pass only without old log-probs: the log-ratio is then 0
            seq_lr = _vespo_seq_lr(logp_s, old_s, ms, seq_s, B)
            phi = _vespo_phi(adv_seq, seq_lr, vespo_is, obj.vespo_params)[seq_s[sl]]
        return _Tokens(logp, part(old_s), part(ref_s), adv_s[sl], part(isw_s), ws[sl], ms[sl], seq_s[sl], phi)

    if two_pass:
        for c0, c1 in chunks.ranges():
            _, z, _, logp, ent = logits_rows(c0, c1, compute_entropy)
            logp_s[c0:c1] = logp
            if ent is not None:
                ent_sum += (ent * ms[c0:c1]).sum()
            del z
        t = _objective_terms(tokens(slice(0, n), logp_s), obj, inv_len, adv_seq)
        loss, kl_sum, clip_sums = t.loss, t.kl_sum, t.clip_sums
        if need.any:
            for c0, c1 in chunks.ranges():
                h, z, lse, _, _ = logits_rows(c0, c1, False)
                chunks.backward_rows(c0, c1, h, z, ys[c0:c1], lse, t.g[c0:c1], temperature)
                del z
    else:
        for c0, c1 in chunks.ranges():
            h, z, lse, logp, ent = logits_rows(c0, c1, compute_entropy)
            logp_s[c0:c1] = logp
            if ent is not None:
                ent_sum += (ent * ms[c0:c1]).sum()
            t = _objective_terms(tokens(slice(c0, c1), logp), obj, inv_len, adv_seq)
            loss += t.loss
            kl_sum += t.kl_sum
            clip_sums += t.clip_sums
            if need.any:
                chunks.backward_rows(c0, c1, h, z, ys[c0:c1], lse, t.g, temperature)
            del z

    n_tok = m_flat.sum().clamp(min=1.0)
    per_seq = obj.importance_sampling_level == "sequence"
    nan = torch.full((), float("nan"), dtype=f32, device=dev)
    metrics = torch.stack([
        kl_sum / n_tok,
        *(clip_sums[:3] / (max(1, B) if per_seq else n_tok)),
        ent_sum / n_tok if compute_entropy else nan,
        clip_sums[3] / (max(1, B) if per_seq else n_tok),
        _vespo_phi(adv_seq, _vespo_seq_lr(logp_s, old_s, ms, seq_s, B), vespo_is, obj.vespo_params).mean()
        if lt == "vespo" else nan,
    ])
    logps = torch.zeros(B * T, dtype=f32, device=dev)
    logps.index_copy_(0, active, logp_s)
    return _GRPOOutputs(loss, metrics, logps.view(B, T), chunks.grad_outputs(hidden))


def _vespo_seq_lr(logp_s, old_s, ms, seq_s, B):
    """(B,) sum over each completion's tokens of clamp(logp - old, -20, 20) * m (TRL line 2998)."""
    lr = torch.zeros_like(logp_s) if old_s is None else logp_s - old_s
    return torch.zeros(B, dtype=logp_s.dtype, device=logp_s.device).index_add_(0, seq_s, lr.clamp(-20.0, 20.0) * ms)


def _vespo_phi(adv, seq_lr, is_sum, params):
    """(B,) VESPO's phi(w) from the summed log-ratio (B,) and the summed clamped log IS
    weights (B,) or None, as TRL ``get_gamma_weights`` (grpo_trainer.py lines 2994-3018)."""
    k_pos, lam_pos, k_neg, lam_neg = params
    low = math.log(1e-8)
    seq = seq_lr if is_sum is None else seq_lr + is_sum
    log_w = seq.clamp(low, 20.0)
    nonneg = adv >= 0
    k = torch.where(nonneg, k_pos, k_neg)
    lam = torch.where(nonneg, lam_pos, lam_neg).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


# ---------------------------------------------------------------------------------------
# Custom op, fake implementation and autograd registration
# ---------------------------------------------------------------------------------------
def _grpo_op_fn(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    ids: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    old_logps: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    importance_weights: torch.Tensor | None,
    loss_type: str,
    importance_sampling_level: str,
    beta: float,
    epsilon_low: float,
    epsilon_high: float,
    delta: float,
    use_bias_correction_kl: bool,
    objective_params: list[float],
    normalizer: float,
    temperature: float,
    compute_entropy: bool,
    need_dh: bool,
    need_dw: bool,
    need_db: bool,
    chunk_tokens: int,
    impl: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns loss, metrics (7,) (reference.METRICS order, NaN where not computed),
    logps (B, T), dL/dhidden, dL/dweight, dL/dbias (float32; empty where not asked for).
    ``objective_params``: sapo temperatures (pos, neg), then vespo k_pos, lambda_pos,
    k_neg, lambda_neg; ``delta`` inf when off."""
    obj = Objective(loss_type, importance_sampling_level, beta, epsilon_low, epsilon_high, delta,
                    use_bias_correction_kl, (objective_params[0], objective_params[1]),
                    (objective_params[2], objective_params[3], objective_params[4], objective_params[5]))
    x = _Completions(ids, mask, advantages, old_logps, ref_logps, importance_weights)
    plan = ChunkPlan(NeededGrads(need_dh, need_dw, need_db), chunk_tokens, impl == "triton")
    with torch.no_grad():
        out = _fused_forward(hidden, weight, bias, x, obj=obj, normalizer=normalizer, temperature=temperature,
                             compute_entropy=compute_entropy, plan=plan)
    return (out.loss, out.metrics, out.logps, *out.grads)


_grpo_op = torch.library.custom_op("ftib::fused_linear_grpo_loss", mutates_args=())(_grpo_op_fn)


@_grpo_op.register_fake
def _grpo_fake(hidden, weight, bias, ids, mask, advantages, old_logps, ref_logps,
               importance_weights, loss_type, importance_sampling_level, beta, epsilon_low,
               epsilon_high, delta, use_bias_correction_kl, objective_params, normalizer,
               temperature, compute_entropy, need_dh, need_dw, need_db, chunk_tokens, impl):
    B, T, _ = hidden.shape
    f32 = torch.float32
    return (
        hidden.new_empty((), dtype=f32),
        hidden.new_empty(len(METRICS), dtype=f32),
        hidden.new_empty(B, T, dtype=f32),
        *fake_grad_outputs(hidden, weight, NeededGrads(need_dh, need_dw, need_db)),
    )


register_stored_grads(_grpo_op, _grpo_op_fn, _OP)


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
    importance_sampling_level: str = "token",
    delta: float | None = None,
    use_bias_correction_kl: bool = True,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    vespo_k_pos: float = 2.0,
    vespo_lambda_pos: float = 3.0,
    vespo_k_neg: float = 3.0,
    vespo_lambda_neg: float = 2.0,
    num_items_in_batch: float | None = None,
    max_completion_length: int | None = None,
    temperature: float = 1.0,
    compute_entropy: bool = False,
    chunk_tokens: int | None = None,
    impl: str = "auto",
) -> GRPOLossOutput:
    """GRPO policy loss over the lm_head projection, without (tokens, V) logits.

    The objective is TRL 1.16's ``GRPOTrainer._compute_loss`` (grpo_trainer.py lines
    3020-3290); :mod:`ftib.kernels.reference.grpo_loss` writes out every formula with
    the TRL lines it follows. Defaults are TRL's (``GRPOConfig``), except ``loss_type``
    which the caller always chooses.

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
            (TRL's vLLM ``importance_sampling_ratio``; for vespo it enters phi instead)
            or None.
        beta: KL coefficient.
        epsilon_low, epsilon_high: clip range [1 - eps_low, 1 + eps_high]; epsilon_high
            defaults to epsilon_low (DAPO's clip-higher uses e.g. 0.28). For cispo,
            epsilon_high is the cap of the ratio itself (ScaleRL recommends 5.0), as TRL.
        loss_type: one of ``LOSS_TYPES``: ``grpo | bnpo | dr_grpo | dapo | cispo | sapo |
            luspo | vespo``.
        importance_sampling_level: ``"token"`` or ``"sequence"`` (GSPO: the ratio is the
            exp of the completion's mean log-ratio).
        delta: two-sided clip: the unclipped ratio is capped at delta (INTELLECT-2); None
            = off. Clipped loss types only.
        use_bias_correction_kl: multiply the k3 KL by the importance ratio (TRL's default).
        sapo_temperature_pos, sapo_temperature_neg: SAPO's tau for A > 0 / A <= 0.
        vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg: VESPO's gamma
            weight parameters for A >= 0 / A < 0.
        num_items_in_batch: dapo, cispo and vespo only, required: the number the summed
            token losses are divided by (the completion tokens of the whole generation
            batch, over all processes and accumulation steps, as TRL's normaliser).
        max_completion_length: dr_grpo's constant L (default T).
        temperature: the sampling temperature; logits are divided by it.
        compute_entropy: also return the mean token entropy (one more row pass).
        chunk_tokens: tokens per chunk; default fits one (chunk, V) float32 buffer in
            128 MiB on CPU, 512 MiB on CUDA.
        impl: ``"auto"`` | ``"triton"`` | ``"torch"`` | ``"reference"``.

    Returns:
        :class:`GRPOLossOutput`; metrics (TRL's, token means over the mask or, for a
        sequence-level ratio, means over the completions): kl, then clip_ratio_low,
        clip_ratio_high, clip_ratio_region (clipped loss types), cispo_clip_ratio
        (cispo) or vespo_phi_seq_mean (vespo), and entropy when asked.

    Sequence-level ratios (and vespo with old log-probs) need a completion's log-probs
    before its tokens' gradients, so those objectives run the chunks twice (one more
    GEMM per chunk); every other objective runs them once.
    """
    op = _OP
    check_tensor(op, "hidden", hidden, ndim=3, dtypes=FLOAT_DTYPES)
    dev = hidden.device
    hidden, weight, bias = _autocast_inputs(hidden, weight, bias)
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
    check_objective(loss_type, importance_sampling_level, delta=delta, where=op)
    if beta != 0.0 and ref_logps is None:
        raise ValueError(f"{op}: ref_logps is required when beta != 0 (beta={beta})")
    eps_high = epsilon_low if epsilon_high is None else epsilon_high
    if not (0 <= epsilon_low < 1 and eps_high >= 0):
        raise ValueError(f"{op}: need 0 <= epsilon_low < 1 and epsilon_high >= 0")
    if not (sapo_temperature_pos > 0 and sapo_temperature_neg > 0):
        raise ValueError(f"{op}: sapo temperatures must be > 0")
    if temperature <= 0 or not math.isfinite(temperature):
        raise ValueError(f"{op}: temperature must be > 0, got {temperature}")
    normalizer = 0.0
    if loss_type in SUM_NORMALISED:
        if num_items_in_batch is None or not num_items_in_batch > 0:
            raise ValueError(
                f"{op}: loss_type={loss_type!r} needs num_items_in_batch > 0, the number of "
                f"completion tokens of the whole generation batch (got {num_items_in_batch})"
            )
        normalizer = float(num_items_in_batch)
    elif num_items_in_batch is not None:
        raise ValueError(f"{op}: num_items_in_batch is the normaliser of {SUM_NORMALISED}; "
                         f"loss_type={loss_type!r}")
    if loss_type == "dr_grpo" and max_completion_length is not None:
        if max_completion_length < 1:
            raise ValueError(f"{op}: max_completion_length must be >= 1")
        normalizer = float(max_completion_length)
    objective = dict(
        loss_type=loss_type, importance_sampling_level=importance_sampling_level, beta=beta,
        epsilon_low=epsilon_low, epsilon_high=eps_high, delta=delta,
        use_bias_correction_kl=use_bias_correction_kl, sapo_temperature_pos=sapo_temperature_pos,
        sapo_temperature_neg=sapo_temperature_neg, vespo_k_pos=vespo_k_pos,
        vespo_lambda_pos=vespo_lambda_pos, vespo_k_neg=vespo_k_neg, vespo_lambda_neg=vespo_lambda_neg,
    )
    chosen = resolve_impl(op, impl, dev, cpu_default="torch", choices=_IMPLS)
    if chosen == "reference":
        loss, metrics, logps = reference.fused_linear_grpo_loss(
            hidden, weight, completion_ids, completion_mask, advantages, bias=bias,
            old_logps=old_logps, ref_logps=ref_logps, importance_weights=importance_weights,
            num_items_in_batch=num_items_in_batch, max_completion_length=max_completion_length,
            temperature=temperature, compute_entropy=compute_entropy, **objective,
        )
        return GRPOLossOutput(loss, {k: v.detach() for k, v in metrics.items()}, logps.detach())
    chunk_tokens = resolve_chunk_tokens(op, chunk_tokens, V, dev)
    need = needed_grads(hidden, weight, bias)
    params = [float(sapo_temperature_pos), float(sapo_temperature_neg), float(vespo_k_pos),
              float(vespo_lambda_pos), float(vespo_k_neg), float(vespo_lambda_neg)]
    # The op's own arithmetic is explicit about precision (float32 statistics); autocast
    # has done its part above.
    with torch.autocast(dev.type, enabled=False):
        loss, metrics, logps, _, _, _ = _grpo_op(
            hidden, weight, bias, completion_ids.to(torch.int64), completion_mask, advantages,
            old_logps, ref_logps, importance_weights, loss_type, importance_sampling_level,
            float(beta), float(epsilon_low), float(eps_high), math.inf if delta is None else float(delta),
            bool(use_bias_correction_kl), params, normalizer, float(temperature),
            bool(compute_entropy), *need, chunk_tokens, chosen,
        )
    names = reference.metric_names(loss_type, compute_entropy)
    return GRPOLossOutput(loss, {k: metrics[METRICS.index(k)] for k in names}, logps)


def token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_tokens: int | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Per-token log-probs log softmax(lm_head(hidden) / temperature)[id] without (tokens,
    V) logits and without gradients: the loss op's own forward (same chunks, same row
    passes), so old/reference log-probs and the loss's log-probs are one computation.

    Args:
        hidden: (N, T, H); weight: (V, H); completion_ids, completion_mask: (N, T).

    Returns:
        (N, T) float32, 0 where the mask is 0 (all positions for ``impl="reference"``).
    """
    with torch.no_grad():
        adv = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        return fused_linear_grpo_loss(hidden, weight, completion_ids, completion_mask, adv, bias=bias,
                                      loss_type="bnpo", temperature=temperature, chunk_tokens=chunk_tokens,
                                      impl=impl).logps


def _autocast_inputs(hidden, weight, bias):
    """The op's autocast rule: under an enabled autocast on the op's device, the GEMM
    operands (hidden, weight, bias) run in the autocast dtype, as ``torch.nn.functional.
    linear`` would (so a float32 master lm_head meets bf16 hidden states in a bf16 GEMM,
    its gradient flowing back to the master through the cast); the log-prob inputs
    (old, reference, IS weights, advantages) are never downcast and every statistic stays
    float32. A rule in the wrapper rather than ``torch.library.register_autocast``, which
    would cast every floating input, the log-probs included."""
    dev = hidden.device.type
    if dev not in ("cuda", "cpu") or not torch.is_autocast_enabled(dev):
        return hidden, weight, bias
    dt = torch.get_autocast_dtype(dev)
    cast = lambda t: t if t is None or t.dtype == dt else t.to(dt)  # noqa: E731
    return cast(hidden), cast(weight), cast(bias)


def check_objective(loss_type: str, importance_sampling_level: str = "token", *,
                    delta: float | None = None, where: str = _OP) -> None:
    """Reject what TRL 1.16 rejects (an unknown loss type or importance-sampling level,
    grpo_trainer.py lines 3088-3093 and 3137-3138 / 3183-3184) and warn where TRL warns
    (lines 916-934): luspo is meant for sequence-level ratios, vespo for token-level ones,
    and a sequence-level ratio with a token-summing loss type weights each completion by
    its length instead of optimising GSPO's per-sequence objective."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"{where}: unknown loss_type {loss_type!r}; one of {LOSS_TYPES}")
    if importance_sampling_level not in reference.IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(f"{where}: unknown importance_sampling_level {importance_sampling_level!r}; "
                         f"one of {reference.IMPORTANCE_SAMPLING_LEVELS}")
    if delta is not None and not (delta > 0 and math.isfinite(delta)):
        raise ValueError(f"{where}: delta (the two-sided clip cap) must be a finite number > 0, got {delta}")
    if loss_type == "luspo" and importance_sampling_level != "sequence":
        warnings.warn(f"{where}: loss_type='luspo' is defined with importance_sampling_level='sequence' "
                      "(the LUSPO paper's setup; TRL warns too)", stacklevel=3)
    if loss_type == "vespo" and importance_sampling_level != "token":
        warnings.warn(f"{where}: vespo weighs whole sequences itself; use importance_sampling_level='token' "
                      "(TRL warns too)", stacklevel=3)
    if importance_sampling_level == "sequence" and loss_type in ("bnpo", "dr_grpo", "dapo", "cispo"):
        warnings.warn(f"{where}: with a sequence-level ratio, loss_type={loss_type!r} sums token terms, so each "
                      "completion weighs by its length; GSPO's per-sequence objective is loss_type='grpo' "
                      "(TRL warns too)", stacklevel=3)
