"""Reference for GRPO advantages, written the way TRL's ``GRPOTrainer`` computes them.

GRPO (Shao et al. 2024, "DeepSeekMath", eq. 3): the advantage of completion i of a group
is (r_i - mean(r)) / std(r). TRL uses the unbiased std and adds 1e-4 to it; Dr. GRPO
(Liu et al. 2025, "Understanding R1-Zero-Like Training") drops the division
(``scale="none"``); ``scale="batch"`` divides by the std of the whole batch.
"""

from __future__ import annotations

import torch


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group-relative advantages.

    Args:
        rewards: (B*G,) rewards, completions of one prompt adjacent.
        group_size: G.
        scale: ``"group"`` | ``"batch"`` | ``"none"``.
        eps: added to the std before dividing.

    Returns:
        advantages (B*G,) float32, group mean (B,) float32, group std (B,) float32 (unbiased,
        0 for a group of one), share of elements whose scaling std is 0 (() float32).
    """
    r = rewards.float()
    grouped = r.view(-1, group_size)
    mean = grouped.mean(dim=1)
    std = grouped.std(dim=1) if group_size > 1 else torch.zeros_like(mean)
    centred = r - mean.repeat_interleave(group_size)
    if scale in ("group", "none"):
        scale_std = std.repeat_interleave(group_size)
    elif scale == "batch":
        scale_std = (r.std() if r.numel() > 1 else r.new_zeros(())).expand_as(r)
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    zero_std = torch.isclose(scale_std, torch.zeros_like(scale_std)).float().mean()
    adv = centred if scale == "none" else centred / (scale_std + eps)
    return adv, mean, std, zero_std
