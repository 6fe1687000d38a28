"""Reference GRPO policy loss on full logits, in eager PyTorch with autograd.

This is the readable definition the fused op is tested against, and the "eager
full-logits" baseline of ``bench/test_bench_grpo_loss.py``. It materialises the
(B, T, V) logits, exactly what the fused op avoids.

Per token t of completion i (mask m_it), with pi = softmax(lm_head(h_it) / temperature):
  logp_it  = log pi(y_it)
  r_it     = exp(logp_it - logp_old_it)            (1 with gradient 1 when old is None)
  pg_it    = -min(r_it A_i, clip(r_it, 1 - eps_low, 1 + eps_high) A_i) * w_is_it
  kl_it    = exp(ref_it - logp_it) - (ref_it - logp_it) - 1   (k3 estimator, Schulman 2020)
  l_it     = pg_it + beta kl_it
and the loss aggregates l_it m_it by ``loss_type``:
  grpo     sum_i [sum_t l_it m_it / max(1, sum_t m_it)] / B       (Shao et al. 2024)
  bnpo     sum_it l_it m_it / max(1, sum_it m_it)
  dr_grpo  sum_it l_it m_it / (B * max_completion_length)          (Liu et al. 2025)
  dapo     sum_it l_it m_it / num_items_in_batch                    (Yu et al. 2025)
"""

from __future__ import annotations

import torch

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
METRICS = ("kl", "clip_ratio_low", "clip_ratio_high", "clip_ratio_region", "entropy")


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
    num_items_in_batch: float | None = None,
    max_completion_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO loss and metrics (kl, clip ratios) from per-token log-probs (B, T)."""
    eps_high = epsilon_low if epsilon_high is None else epsilon_high
    m = mask.float()
    adv = advantages.float().unsqueeze(1)
    old = logps.detach() if old_logps is None else old_logps.float()
    coef = torch.exp(logps - old)
    clipped = torch.clamp(coef, 1 - epsilon_low, 1 + eps_high)
    per_token = -torch.min(coef * adv, clipped * adv)
    if importance_weights is not None:
        per_token = per_token * importance_weights.float()
    kl = None
    if beta != 0.0:
        delta = ref_logps.float() - logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
    B = logps.shape[0]
    if loss_type == "grpo":
        loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).sum() / B
    elif loss_type == "bnpo":
        loss = (per_token * m).sum() / m.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        length = logps.shape[1] if max_completion_length is None else max_completion_length
        loss = (per_token * m).sum() / (B * length)
    elif loss_type == "dapo":
        loss = (per_token * m).sum() / num_items_in_batch
    else:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    with torch.no_grad():
        denom = m.sum().clamp(min=1.0)
        low = ((coef < 1 - epsilon_low) & (adv < 0)).float()
        high = ((coef > 1 + eps_high) & (adv > 0)).float()
        region = ((low + high) > 0).float()
        metrics = {
            "kl": (kl * m).sum() / denom if kl is not None else m.new_zeros(()),
            "clip_ratio_low": (low * m).sum() / denom,
            "clip_ratio_high": (high * m).sum() / denom,
            "clip_ratio_region": (region * m).sum() / denom,
        }
    return loss, metrics


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
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Eager GRPO loss on full logits (same arguments as ftib.kernels.grpo_loss).

    Returns:
        loss () float32 (differentiable w.r.t. hidden, weight, bias), metrics dict
        (kl, clip_ratio_low/high/region, and entropy when asked; detached), logps (B, T) float32.
    """
    logps, entropy = token_logps_and_entropy(
        hidden, weight, bias, completion_ids, temperature, compute_entropy
    )
    loss, metrics = grpo_loss_from_logps(
        logps, completion_mask, advantages, old_logps=old_logps, ref_logps=ref_logps,
        importance_weights=importance_weights, beta=beta, epsilon_low=epsilon_low,
        epsilon_high=epsilon_high, loss_type=loss_type, num_items_in_batch=num_items_in_batch,
        max_completion_length=max_completion_length,
    )
    if entropy is not None:
        m = completion_mask.float()
        metrics["entropy"] = (entropy * m).sum() / m.sum().clamp(min=1.0)
    return loss, metrics, logps
