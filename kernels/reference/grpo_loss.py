"""Reference GRPO policy loss on full logits, in eager PyTorch with autograd.

This is the readable definition the fused op is tested against, and the "eager
full-logits" baseline of ``bench/test_bench_grpo_loss.py``. It materialises the
(B, T, V) logits, exactly what the fused op avoids. Every objective is written the way
TRL 1.16's ``GRPOTrainer._compute_loss`` (``trl/trainer/grpo_trainer.py``, lines
3020-3290) writes it, with the same autograd graph, so gradients agree with TRL's by
construction; ``tests/kernels/test_grpo_loss.py`` also runs TRL's own method on identical
inputs where TRL is installed.

Per token t of completion i (mask m_it, n_i = max(1, sum_t m_it)), with
pi = softmax(lm_head(h_it) / temperature):

  logp_it  = log pi(y_it);  lr_it = logp_it - logp_old_it   (old = logp.detach() when None:
             value 0, gradient 1, TRL lines 3060-3066)
  s_it     = lr_it                                   importance_sampling_level="token"
           = sum_t lr_it m_it / n_i  (for every t)   ="sequence" (GSPO, Zheng et al. 2025;
                                                     TRL lines 3084-3093)
  c_it     = exp(s_it)
  kl_it    = exp(ref_it - logp_it) - (ref_it - logp_it) - 1   (k3, Schulman 2020), times
             c_it when use_bias_correction_kl (TRL lines 3094-3106; TRL's default)

policy term p_it by ``loss_type`` (TRL lines 3109-3138):
  grpo, bnpo, dr_grpo, dapo, luspo:
           p = -min(c' A_i, clip(c, 1 - eps_low, 1 + eps_high) A_i), c' = min(c, delta) when
           ``delta`` is set (two-sided clip, INTELLECT-2 2025) else c
  cispo    p = -sg[min(c, eps_high)] A_i logp_it            (MiniMax-M1 / ScaleRL 2025; note
           eps_high is the ratio cap itself here, e.g. 5.0, as TRL)
  sapo     p = -4/tau sigmoid(tau (c - 1)) A_i, tau = tau_pos if A_i > 0 else tau_neg
           (Gao et al. 2025, SAPO)
  vespo    p = -sg[phi_i] A_i logp_it, phi_i = exp(lam + k log w_i - lam w_i) with
           log w_i = clamp(sum_t clamp(lr_it, -20, 20) m_it + sum_t clamp(log isw_it,
           log 1e-8, 20), log 1e-8, 20), (k, lam) by the sign of A_i >= 0
           (TRL ``get_gamma_weights``, lines 2970-3018; the IS weights enter phi, not p)

then l_it = p_it * isw_it (not for vespo; TRL lines 3146-3147) + beta kl_it, and the loss
aggregates l_it m_it (TRL lines 3152-3184):
  grpo, sapo  sum_i [sum_t l_it m_it / n_i] / B                   (Shao et al. 2024)
  bnpo        sum_it l_it m_it / max(1, sum_it m_it)
  dr_grpo     sum_it l_it m_it / (B * max_completion_length)       (Liu et al. 2025)
  dapo, cispo, vespo  sum_it l_it m_it / num_items_in_batch        (Yu et al. 2025)
  luspo       sum_i sum_t l_it m_it / B                            (LUSPO 2025)

``num_items_in_batch`` is the normaliser TRL divides by after its own rescaling
(``num_items_in_batch / num_processes * grad_accum / steps_per_generation``): the caller
passes the number it wants the sum divided by. Metrics follow TRL lines 3254-3290: token
means over the mask, or sequence means over all B rows for (B, 1)-shaped quantities
(sequence-level clip indicators, vespo's phi).
"""

from __future__ import annotations

import math

import torch

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
CLIPPED_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
# Every metric either implementation can report; which ones a call reports depends on
# the loss type (see ``metric_names``).
METRICS = ("kl", "clip_ratio_low", "clip_ratio_high", "clip_ratio_region", "entropy",
           "cispo_clip_ratio", "vespo_phi_seq_mean")


def metric_names(loss_type: str, compute_entropy: bool) -> tuple[str, ...]:
    """The metrics reported for ``loss_type`` (TRL lines 3269-3288 log the same set)."""
    names = ["kl"]
    if loss_type in CLIPPED_LOSS_TYPES:
        names += ["clip_ratio_low", "clip_ratio_high", "clip_ratio_region"]
    elif loss_type == "cispo":
        names.append("cispo_clip_ratio")
    elif loss_type == "vespo":
        names.append("vespo_phi_seq_mean")
    if compute_entropy:
        names.append("entropy")
    return tuple(names)


def token_logps_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    ids: torch.Tensor,
    temperature: float = 1.0,
    compute_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability of the chosen tokens and the entropy, from full logits.

    Args:
        hidden: (B, T, H); weight: (V, H); bias: (V,) or None; ids: (B, T) int64.

    Returns:
        logps (B, T) float32 (differentiable), entropy (B, T) float32 (detached) or None.
    """
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    logits = logits.float() / temperature
    logprobs = torch.log_softmax(logits, dim=-1)
    logps = logprobs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if compute_entropy:
        with torch.no_grad():
            entropy = -(logprobs.exp() * logprobs).sum(-1)
    return logps, entropy


@torch.no_grad()
def vespo_phi(
    advantages: torch.Tensor,
    log_ratio: torch.Tensor,
    mask: torch.Tensor,
    importance_weights: torch.Tensor | None,
    k_pos: float = 2.0,
    lambda_pos: float = 3.0,
    k_neg: float = 3.0,
    lambda_neg: float = 2.0,
) -> torch.Tensor:
    """VESPO's detached gamma weight phi(w) per sequence, as TRL ``get_gamma_weights``
    (lines 2970-3018): (B, 1) float32 from advantages (B, 1), log_ratio/mask (B, T) and
    the per-token IS weights (B, T) or None (summed over all T, mask ignored, as TRL)."""
    low = math.log(1e-8)
    seq = torch.sum(torch.clamp(log_ratio, -20.0, 20.0) * mask, dim=-1, keepdim=True)
    if importance_weights is not None:
        seq = seq + torch.sum(torch.clamp(torch.log(importance_weights), low, 20.0), dim=-1, keepdim=True)
    log_w = torch.clamp(seq, low, 20.0)
    nonneg = advantages >= 0
    k = torch.where(nonneg, k_pos, k_neg)
    lam = torch.where(nonneg, lambda_pos, lambda_neg).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def grpo_loss_from_logps(
    logps: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    *,
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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO loss and metrics from per-token log-probs logps (B, T) float32 (see the module
    docstring for every formula and the TRL lines it follows).

    Returns:
        loss () float32 (differentiable w.r.t. logps); metrics name -> () float32
        (detached): kl and the loss type's own (see :func:`metric_names`).
    """
    eps_high = epsilon_low if epsilon_high is None else epsilon_high
    m = mask.float()
    adv = advantages.float().unsqueeze(1)
    old = logps.detach() if old_logps is None else old_logps.float()
    log_ratio = logps - old
    if importance_sampling_level == "token":
        log_iw = log_ratio
    elif importance_sampling_level == "sequence":
        log_iw = ((log_ratio * m).sum(-1) / m.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    else:
        raise ValueError(f"importance_sampling_level must be one of {IMPORTANCE_SAMPLING_LEVELS}, "
                         f"got {importance_sampling_level!r}")
    coef_1 = torch.exp(log_iw)
    kl = None
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta != 0 needs ref_logps")
        d = ref_logps.float() - logps
        kl = torch.exp(d) - d - 1
        if use_bias_correction_kl:
            kl = kl * coef_1
    phi = None
    if loss_type == "cispo":
        per_token = -torch.clamp(coef_1, max=eps_high).detach() * adv * logps
    elif loss_type in CLIPPED_LOSS_TYPES:
        coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + eps_high)
        if delta is not None:
            coef_1 = torch.clamp(coef_1, max=delta)
        per_token = -torch.min(coef_1 * adv, coef_2 * adv)
    elif loss_type == "sapo":
        tau = torch.where(adv > 0, sapo_temperature_pos, sapo_temperature_neg)
        per_token = -(torch.sigmoid(tau * (coef_1 - 1)) * 4 / tau) * adv
    elif loss_type == "vespo":
        phi = vespo_phi(adv, log_ratio, m, importance_weights, vespo_k_pos, vespo_lambda_pos,
                        vespo_k_neg, vespo_lambda_neg)
        per_token = -phi * adv * logps
    else:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if importance_weights is not None and loss_type != "vespo":
        per_token = per_token * importance_weights.float()
    if kl is not None:
        per_token = per_token + beta * kl
    B = logps.shape[0]
    if loss_type in ("grpo", "sapo"):
        loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).sum() / B
    elif loss_type == "bnpo":
        loss = (per_token * m).sum() / m.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        length = logps.shape[1] if max_completion_length is None else max_completion_length
        loss = (per_token * m).sum() / (B * length)
    elif loss_type in ("dapo", "cispo", "vespo"):
        if num_items_in_batch is None:
            raise ValueError(f"loss_type {loss_type!r} needs num_items_in_batch (the global token count)")
        loss = (per_token * m).sum() / num_items_in_batch
    else:  # luspo
        loss = (per_token * m).sum(-1).sum() / B
    with torch.no_grad():
        def masked_mean(x):  # TRL's global_masked_mean (one process)
            if x.shape[1] == 1:
                return x.sum() / max(1, x.shape[0])
            return (x * m).sum() / m.sum().clamp(min=1.0)

        metrics = {"kl": masked_mean(kl) if kl is not None else m.new_zeros(())}
        if loss_type in CLIPPED_LOSS_TYPES:
            low = ((coef_1 < 1 - epsilon_low) & (adv < 0)).float()
            high = ((coef_1 > 1 + eps_high) & (adv > 0)).float()
            metrics["clip_ratio_low"] = masked_mean(low)
            metrics["clip_ratio_high"] = masked_mean(high)
            metrics["clip_ratio_region"] = masked_mean(((low + high) > 0).float())
        elif loss_type == "cispo":
            metrics["cispo_clip_ratio"] = masked_mean(((coef_1 > eps_high) & (adv > 0)).float())
        elif loss_type == "vespo":
            metrics["vespo_phi_seq_mean"] = masked_mean(phi)
    return loss, metrics


def fused_linear_grpo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    advantages: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    compute_entropy: bool = False,
    **objective,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Eager GRPO loss on full logits (same arguments as ftib.kernels.grpo_loss; the
    objective's keyword arguments are :func:`grpo_loss_from_logps`'s).

    Returns:
        loss () float32 (differentiable w.r.t. hidden, weight, bias), metrics dict
        (:func:`metric_names`; detached), logps (B, T) float32.
    """
    logps, entropy = token_logps_and_entropy(
        hidden, weight, bias, completion_ids, temperature, compute_entropy
    )
    loss, metrics = grpo_loss_from_logps(logps, completion_mask, advantages, **objective)
    if entropy is not None:
        m = completion_mask.float()
        metrics["entropy"] = (entropy * m).sum() / m.sum().clamp(min=1.0)
    return loss, metrics, logps
