"""Reference linear cross-entropy on full logits, in eager PyTorch with autograd.

The readable definition :mod:`ftib.kernels.linear_ce` is tested against, and the "eager
full-logits" baseline of ``bench/test_bench_linear_ce.py``: it materialises the
(tokens, V) logits, which the fused op avoids.

Per token t with label y_t != ignore_index, z_t = lm_head(h_t) in float32:
  lse_t  = log sum_v exp(z_tv)
  ce_t   = lse_t - z_t,y_t                      (= -log softmax(z_t)[y_t])
  l_t    = ce_t + z_loss_weight * lse_t ** 2    (z-loss: Chowdhery et al. 2022, PaLM, §5;
                                                 Liger's ``lse_square_scale``)
and the loss is sum_t l_t (``reduction="sum"``) or sum_t l_t / max(1, #labelled)
(``"mean"``, ``torch.nn.functional.cross_entropy``'s default with ``ignore_index``).
"""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum")


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    z_loss_weight: float = 0.0,
    reduction: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``labels`` under ``hidden @ weight.T (+ bias)``.

    Args:
        hidden: (..., H); weight: (V, H); labels: (...) int64; bias: (V,) or None.

    Returns:
        loss () float32 (differentiable, z-loss included), z_loss () float32 (detached,
        the z-loss term alone, same reduction).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    logits = logits.float().reshape(-1, weight.shape[0])
    y = labels.reshape(-1)
    keep = y != ignore_index
    loss = torch.nn.functional.cross_entropy(logits, y, ignore_index=ignore_index, reduction="sum")
    z = logits.new_zeros(())
    if z_loss_weight:  # only then: the benchmark's eager baseline is plain cross_entropy
        z = (torch.logsumexp(logits, dim=-1).square() * keep).sum()
        loss = loss + z_loss_weight * z
    if reduction == "mean":
        n = keep.sum().clamp(min=1)
        loss, z = loss / n, z / n
    return loss, (z_loss_weight * z).detach()
