"""GRPO advantages: native C++ and Triton against the TRL-style eager reference."""

from __future__ import annotations

import pytest
import torch

from kernel_parity import assert_close, device_for, impl_params

from ftib.kernels.advantages import group_advantages
from ftib.kernels.reference import advantages as ref

# (B, G): a group of one, one group, odd sizes, G above the native grain.
SHAPES = [(1, 1), (3, 1), (1, 5), (7, 3), (5, 16), (33, 7), (9, 130)]


def _rewards(B, G, dtype, seed, nan=False):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(B, G, generator=g)
    if B > 2:
        r[1] = 0.25  # a zero-std group
    if B > 3:
        r[3] = (torch.rand(G, generator=g) > 0.5).float()  # binary rewards with ties
    if B > 4:
        r[4] = 0.7  # a constant group whose float32 mean is inexact
    if nan:  # unscorable completions: scattered, a whole group, all but one of a group
        r[torch.rand(B, G, generator=g) < 0.2] = float("nan")
        if B > 5:
            r[5] = float("nan")
        if B > 6:
            r[6, 1:] = float("nan")
    return r.reshape(-1).to(dtype)


@pytest.mark.parametrize("impl", impl_params("native", "triton", "torch"))
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("shape", [(7, 3), (9, 130), (33, 7)], ids=lambda s: "x".join(map(str, s)))
def test_nan_rewards_match_reference(impl, scale, shape):
    B, G = shape
    rewards = _rewards(B, G, torch.float32, seed=B + G, nan=True).to(device_for(impl))
    got = group_advantages(rewards, G, scale=scale, impl=impl)
    want = ref.group_advantages(rewards, G, scale)
    for name, a, e in zip(("advantages", "group_mean", "group_std", "zero_std_fraction"), got, want):
        assert_close(a, e, torch.float32, f"{name}[{impl}, {scale}, NaN rewards]")
    assert bool(torch.isfinite(got.advantages).all())
    assert bool((got.advantages.cpu()[torch.isnan(rewards.cpu())] == 0).all())


@pytest.mark.parametrize("impl", impl_params("native", "triton", "torch"))
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("value", [0.7, 0.1, 1.0 / 3.0, -2.3, 1e6 + 0.1])
@pytest.mark.parametrize("G", [2, 3, 7, 8, 130])
def test_constant_groups_are_exact(impl, scale, value, G):
    """A group of identical rewards carries no signal: advantages exactly 0, std exactly 0,
    counted as zero-std (float32 statistics fail this, e.g. 0.7 x 3 gives ~6e-4)."""
    r = torch.full((2, G), value)
    r[1] = torch.linspace(-1, 1, G)
    rewards = r.reshape(-1).to(device_for(impl))
    out = group_advantages(rewards, G, scale=scale, impl=impl)
    assert bool((out.advantages[:G] == 0).all()), out.advantages[:G]
    assert float(out.group_std[0]) == 0.0 and float(out.group_mean[0]) == float(torch.tensor(value))
    if scale != "batch":
        assert float(out.zero_std_fraction) == 0.5


def test_reference_matches_trl_formula():
    """The reference against TRL 1.16's own nan-aware formula (grpo_trainer.py lines
    2765-2810, with trl.trainer.utils.nanstd) fed float64 rewards."""
    trl_utils = pytest.importorskip("trl.trainer.utils")
    for scale in ("group", "batch", "none"):
        for B, G in [(7, 3), (9, 130), (33, 7), (1, 5)]:
            rewards = _rewards(B, G, torch.float32, seed=B * G, nan=True)
            r = rewards.double()
            mean = torch.nanmean(r.view(-1, G), dim=1).repeat_interleave(G)
            if scale == "batch":
                std = trl_utils.nanstd(r).expand_as(r)
            else:
                std = trl_utils.nanstd(r.view(-1, G), dim=1).repeat_interleave(G)
            adv = r - mean if scale == "none" else (r - mean) / (std + 1e-4)
            want_zero = torch.isclose(std, torch.zeros_like(std)).float().mean()
            got = ref.group_advantages(rewards, G, scale)
            assert_close(got[0], torch.nan_to_num(adv, nan=0.0), torch.float32, f"advantages[{scale}]")
            assert float(got[3]) == float(want_zero), scale


@pytest.mark.parametrize("impl", impl_params("native", "triton"))
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(impl, scale, dtype, shape):
    B, G = shape
    rewards = _rewards(B, G, dtype, seed=B * 100 + G).to(device_for(impl))
    got = group_advantages(rewards, G, scale=scale, impl=impl)
    want = ref.group_advantages(rewards, G, scale)
    # float64 statistics everywhere; outputs float32.
    for name, a, e in zip(("advantages", "group_mean", "group_std", "zero_std_fraction"), got, want):
        assert a.dtype == torch.float32, name
        assert_close(a, e, torch.float32, f"{name}[{impl}, {scale}]")


@pytest.mark.parametrize("impl", impl_params("native", "triton"))
def test_known_values(impl):
    r = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0], device=device_for(impl))
    out = group_advantages(r, 3, impl=impl)
    assert_close(out.group_mean, torch.tensor([2.0, 5.0]), torch.float32, "mean")
    assert_close(out.group_std, torch.tensor([1.0, 0.0]), torch.float32, "std")
    assert_close(out.advantages, torch.tensor([-1, 0, 1, 0, 0, 0]) / 1.0001, torch.float32, "adv")
    assert float(out.zero_std_fraction) == 0.5
    one = group_advantages(r, 1, impl=impl)
    assert float(one.zero_std_fraction) == 1.0 and bool((one.advantages == 0).all())


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.randn(7), 3)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.randn(6), 3, scale="global")
    with pytest.raises(ValueError, match="rewards"):
        group_advantages(torch.randn(2, 3), 3)
    with pytest.raises(TypeError, match="rewards"):
        group_advantages(torch.arange(6), 3)


def test_custom_op_traces_under_compile():
    r = _rewards(4, 5, torch.float32, seed=3)
    torch.library.opcheck(torch.ops.ftib.group_advantages.default, (r, 5, "batch", 1e-4, "native"))
    fn = torch.compile(lambda x: group_advantages(x, 5, impl="native").advantages + 1,
                       backend="aot_eager", fullgraph=True)
    assert_close(fn(r), ref.group_advantages(r, 5)[0] + 1, torch.float32, "compiled")
