"""GRPO advantages: group mean/std normalisation of rewards, with TRL's semantics.

For rewards ``r`` of shape (B*G,) with the G completions of a prompt adjacent:
``adv_i = (r_i - mean_g) / (s + 1e-4)`` where ``mean_g`` is the group mean and ``s`` the
unbiased std of the group (``scale="group"``, GRPO, Shao et al. 2024), of the whole batch
(``scale="batch"``), or no division at all (``scale="none"``, Dr. GRPO, Liu et al. 2025).
A group of one has std 0 (TRL does the same). The share of elements whose scaling std is
0 is TRL's ``frac_reward_zero_std`` (in ``group``/``none`` mode, the share of groups whose
completions all got the same reward and therefore carry no learning signal).

A NaN reward marks an unscorable completion: as in TRL 1.16 (grpo_trainer.py lines
2755-2810) the statistics skip it (nan-aware mean and unbiased std, std NaN with fewer
than two rewards) and every NaN advantage becomes 0. All implementations compute the
statistics in float64, so a constant group (e.g. all 0.7) gets advantages exactly 0 and
is always counted as zero-std (see :mod:`ftib.kernels.reference.advantages`).

Implementations (``impl=``): ``"triton"`` (CUDA), ``"native"`` (C++), ``"torch"`` (the
eager reference). ``"auto"``: Triton on CUDA, native on CPU, logged.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ftib.kernels import native
from ftib.kernels._dispatch import FLOAT_DTYPES, check_tensor, resolve_impl
from ftib.kernels.reference import advantages as reference

_OP = "group_advantages"
_IMPLS = ("triton", "native", "torch")
_SCALES = ("group", "batch", "none")


class Advantages(NamedTuple):
    """advantages (B*G,), group mean (B,), group std (B,) float32; zero-std share ()."""

    advantages: torch.Tensor
    group_mean: torch.Tensor
    group_std: torch.Tensor
    zero_std_fraction: torch.Tensor


# ---------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------
@triton.jit
def _group_stats_kernel(
    r_ptr, adv_ptr, mean_ptr, std_ptr, n_groups, G, eps,
    SCALE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_G: tl.constexpr,
):
    """Per group, in float64 over the non-NaN rewards: mean, unbiased std (NaN below two
    rewards, 0 for G = 1); SCALE 0 (group) / 2 (none) also write the advantages."""
    groups = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_G)
    ok = (groups[:, None] < n_groups) & (cols[None, :] < G)
    offs = groups[:, None].to(tl.int64) * G + cols[None, :]
    r = tl.load(r_ptr + offs, mask=ok, other=0.0).to(tl.float64)
    valid = ok & (r == r)
    count = tl.sum(valid.to(tl.float64), axis=1)
    mean = tl.sum(tl.where(valid, r, 0.0), axis=1) / count  # 0 / 0 = NaN: no reward
    centred = tl.where(valid, r - mean[:, None], 0.0)
    var = tl.sum(centred * centred, axis=1) / tl.maximum(count - 1.0, 1.0)
    std = tl.where(count > 1.0, tl.sqrt(var), float("nan"))
    std = tl.where(G > 1, std, 0.0)
    g_ok = groups < n_groups
    tl.store(mean_ptr + groups, mean.to(tl.float32), mask=g_ok)
    tl.store(std_ptr + groups, std.to(tl.float32), mask=g_ok)
    d = r - mean[:, None]  # NaN for a NaN reward
    if SCALE == 0:
        a = d / (std[:, None] + eps)
        tl.store(adv_ptr + offs, tl.where(a == a, a, 0.0).to(tl.float32), mask=ok)
    if SCALE == 2:
        tl.store(adv_ptr + offs, tl.where(d == d, d, 0.0).to(tl.float32), mask=ok)


@triton.jit
def _batch_std_kernel(r_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """out[0] = unbiased std of the non-NaN r[0:n] in float64 (NaN below two of them,
    0 when n < 2); one program, two passes."""
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    cnt = tl.zeros([BLOCK], dtype=tl.float64)
    for i in range(0, n, BLOCK):
        offs = i + tl.arange(0, BLOCK)
        x = tl.load(r_ptr + offs, mask=offs < n, other=0.0).to(tl.float64)
        v = (offs < n) & (x == x)
        acc += tl.where(v, x, 0.0)
        cnt += v.to(tl.float64)
    count = tl.sum(cnt, axis=0)
    mean = tl.sum(acc, axis=0) / count
    sq = tl.zeros([BLOCK], dtype=tl.float64)
    for i in range(0, n, BLOCK):
        offs = i + tl.arange(0, BLOCK)
        x = tl.load(r_ptr + offs, mask=offs < n, other=0.0).to(tl.float64)
        d = tl.where((offs < n) & (x == x), x - mean, 0.0)
        sq += d * d
    var = tl.sum(sq, axis=0) / tl.maximum(count - 1.0, 1.0)
    std = tl.where(count > 1.0, tl.sqrt(var), float("nan"))
    tl.store(out_ptr, tl.where(n > 1, std, 0.0))


@triton.jit
def _batch_scale_kernel(r_ptr, mean_ptr, std_ptr, adv_ptr, n, G, eps, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    r = tl.load(r_ptr + offs, mask=ok, other=0.0).to(tl.float64)
    m = tl.load(mean_ptr + offs // G, mask=ok, other=0.0).to(tl.float64)
    s = tl.load(std_ptr)
    a = (r - m) / (s + eps)
    tl.store(adv_ptr + offs, tl.where(a == a, a, 0.0).to(tl.float32), mask=ok)


def _advantages_triton(rewards: torch.Tensor, G: int, scale: str, eps: float):
    n = rewards.shape[0]
    groups = n // G
    dev = rewards.device
    adv = torch.empty(n, dtype=torch.float32, device=dev)
    mean = torch.empty(groups, dtype=torch.float32, device=dev)
    std = torch.empty(groups, dtype=torch.float32, device=dev)
    BLOCK_G = triton.next_power_of_2(G)
    BLOCK_B = max(1, min(64, 4096 // BLOCK_G))
    code = _SCALES.index(scale)
    if groups:
        _group_stats_kernel[(triton.cdiv(groups, BLOCK_B),)](
            rewards, adv, mean, std, groups, G, eps, SCALE=code, BLOCK_B=BLOCK_B, BLOCK_G=BLOCK_G
        )
    if scale == "batch":
        # float64: the group mean it is applied with is float32-rounded, exact for a
        # constant group; the batch std itself is only a divisor.
        mean64 = mean.double()
        bstd = torch.empty(1, dtype=torch.float64, device=dev)
        _batch_std_kernel[(1,)](rewards, bstd, n, BLOCK=1024)
        if n:
            _batch_scale_kernel[(triton.cdiv(n, 1024),)](
                rewards, mean64, bstd, adv, n, G, eps, BLOCK=1024
            )
        zero = (bstd.abs() <= 1e-8).float().mean().reshape(())
    else:
        zero = (std.abs() <= 1e-8).float().mean()
    return adv, mean, std, zero


# ---------------------------------------------------------------------------------------
# Custom op and fake implementation
# ---------------------------------------------------------------------------------------
@torch.library.custom_op("ftib::group_advantages", mutates_args=())
def _advantages_op(
    rewards: torch.Tensor, group_size: int, scale: str, eps: float, impl: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if impl == "torch":
        adv, mean, std, zero = reference.group_advantages(rewards, group_size, scale, eps)
        return adv, mean, std, zero
    r = rewards.to(torch.float32).contiguous()
    if impl == "native":
        adv, mean, std, zero_frac = native.group_advantages(r, group_size, scale, eps)
        return adv, mean, std, torch.tensor(zero_frac, dtype=torch.float32)
    return _advantages_triton(r, group_size, scale, eps)


@_advantages_op.register_fake
def _advantages_fake(rewards, group_size, scale, eps, impl):
    n = rewards.shape[0]
    groups = n // group_size
    f32 = torch.float32
    return (
        rewards.new_empty(n, dtype=f32),
        rewards.new_empty(groups, dtype=f32),
        rewards.new_empty(groups, dtype=f32),
        rewards.new_empty((), dtype=f32),
    )


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    scale: str = "group",
    eps: float = 1e-4,
    impl: str = "auto",
) -> Advantages:
    """Group-relative advantages (TRL's GRPOTrainer semantics).

    Args:
        rewards: (B*G,) float32/bfloat16/float16 rewards, each prompt's G completions
            adjacent; NaN = unscorable (advantage 0, left out of the statistics).
        group_size: G (``num_generations``), >= 1, dividing len(rewards).
        scale: ``"group"`` | ``"batch"`` | ``"none"``.
        eps: added to the std before dividing (TRL: 1e-4).
        impl: ``"auto"`` | ``"triton"`` | ``"native"`` | ``"torch"``.

    Returns:
        :class:`Advantages`; all tensors float32 on the rewards' device.
    """
    check_tensor(_OP, "rewards", rewards, ndim=1, dtypes=FLOAT_DTYPES)
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"{_OP}: group_size must be an int >= 1, got {group_size!r}")
    if rewards.shape[0] % group_size:
        raise ValueError(
            f"{_OP}: rewards has {rewards.shape[0]} entries, not a multiple of group_size={group_size}"
        )
    if scale not in _SCALES:
        raise ValueError(f"{_OP}: scale must be one of {_SCALES}, got {scale!r}")
    chosen = resolve_impl(_OP, impl, rewards.device, cpu_default="native", choices=_IMPLS)
    return Advantages(*_advantages_op(rewards, group_size, scale, float(eps), chosen))
