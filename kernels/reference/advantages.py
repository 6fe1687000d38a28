"""Reference for GRPO advantages, written the way TRL 1.16's ``GRPOTrainer`` computes them
(``_generate_and_score_completions``, trl/trainer/grpo_trainer.py lines 2755-2812,
``multi_objective_aggregation="sum_then_normalize"``, its default), in float64.

GRPO (Shao et al. 2024, "DeepSeekMath", eq. 3): the advantage of completion i of a group
is (r_i - mean(r)) / (std(r) + 1e-4) with the unbiased std (``scale="group"``); Dr. GRPO
(Liu et al. 2025) drops the division (``scale="none"``); ``scale="batch"`` divides by the
std of the whole batch. An unscorable completion has reward NaN: TRL's statistics are
nan-aware (``torch.nanmean`` and ``trl.trainer.utils.nanstd``: mean and Bessel-corrected
std over the non-NaN rewards, std NaN when fewer than two remain) and every NaN advantage
becomes 0 (``torch.nan_to_num``, line 2810). A group of one (G = 1) has std 0.

Where ftib differs from TRL: the statistics are float64, so a group of identical rewards
(e.g. all 0.7) has mean exactly 0.7 and std exactly 0, hence advantages exactly 0 and a
zero-std flag that always fires; TRL's float32 mean is inexact there and hands such a
group advantages of up to ~1e-3. Elsewhere the two agree to float32 rounding.
"""

from __future__ import annotations

import torch


def _nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Bessel-corrected std over the non-NaN entries, NaN where fewer than two (TRL's nanstd)."""
    if dim is None:
        x, dim = x.reshape(-1), 0
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim)
    count = (~torch.isnan(x)).sum(dim)
    corr = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.full_like(var, float("nan")))
    return torch.sqrt(var * corr)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group-relative advantages.

    Args:
        rewards: (B*G,) rewards, completions of one prompt adjacent; NaN = unscorable.
        group_size: G.
        scale: ``"group"`` | ``"batch"`` | ``"none"``.
        eps: added to the std before dividing.

    Returns:
        advantages (B*G,) float32 (0 where TRL's would be NaN), group mean (B,) float32
        (NaN for a group without a reward), group std (B,) float32 (unbiased over the
        non-NaN rewards, NaN with fewer than two, 0 for G = 1), share of elements whose
        scaling std is 0 (torch.isclose(std, 0); () float32).
    """
    r = rewards.double()
    grouped = r.view(-1, group_size)
    mean = torch.nanmean(grouped, dim=1)
    std = _nanstd(grouped, dim=1) if group_size > 1 else torch.zeros_like(mean)
    centred = r - mean.repeat_interleave(group_size)
    if scale in ("group", "none"):
        scale_std = std.repeat_interleave(group_size)
    elif scale == "batch":
        scale_std = (_nanstd(r) if r.numel() > 1 else r.new_zeros(())).expand_as(r)
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    zero_std = torch.isclose(scale_std, torch.zeros_like(scale_std)).float().mean()
    adv = centred if scale == "none" else centred / (scale_std + eps)
    adv = torch.nan_to_num(adv, nan=0.0)
    return adv.float(), mean.float(), std.float(), zero_std
