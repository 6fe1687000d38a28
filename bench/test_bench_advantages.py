"""GRPO advantages: fused (native C++ on CPU, Triton on CUDA) vs eager PyTorch (TRL's nan-aware formula, in
float64: ftib.kernels.reference.advantages).

    pytest bench/test_bench_advantages.py --benchmark-only --benchmark-group-by=param:size
"""

from __future__ import annotations

import pytest
import torch

from ftib.bench._kernel_bench import extra_info, sync
from ftib.kernels.advantages import group_advantages
from ftib.kernels.reference import advantages as ref

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FUSED = "triton" if DEVICE.type == "cuda" else "native"
# (prompts B, group size G)
SIZES = {"b64-g8": (64, 8), "b1024-g16": (1024, 16), "b65536-g16": (65536, 16)}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("scale", ["group", "batch"])
@pytest.mark.parametrize("mode", ["forward"])
@pytest.mark.parametrize("impl", ["fused", "eager"])
def test_advantages(benchmark, impl, mode, scale, size):
    B, G = SIZES[size]
    rewards = torch.rand(B * G, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    if impl == "fused":
        fn = lambda: group_advantages(rewards, G, scale=scale, impl=FUSED)  # noqa: E731
    else:
        fn = lambda: ref.group_advantages(rewards, G, scale)  # noqa: E731
    torch.testing.assert_close(group_advantages(rewards, G, scale=scale, impl=FUSED).advantages,
                               ref.group_advantages(rewards, G, scale)[0], atol=1e-4, rtol=1e-4)

    def run():
        out = fn()
        sync(DEVICE)
        return out

    extra_info(benchmark, impl=FUSED if impl == "fused" else "eager", mode=mode, device=DEVICE,
               dtype=torch.float32, shapes={"B": B, "G": G}, scale=scale)
    benchmark.pedantic(run, rounds=50, warmup_rounds=5, iterations=1)
