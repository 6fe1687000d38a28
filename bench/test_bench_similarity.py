"""Embedding-reward similarity: fused (native C++ on CPU, Triton on CUDA) vs eager PyTorch.

    pytest bench/test_bench_similarity.py --benchmark-only --benchmark-group-by=param:size
"""

from __future__ import annotations

import pytest
import torch

from ftib.bench._kernel_bench import extra_info, sync
from ftib.kernels.reference import similarity as ref
from ftib.kernels.similarity import embedding_similarity

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FUSED = "triton" if DEVICE.type == "cuda" else "native"
# (completions N, tokens T, hidden H): a GRPO step of 8 prompts x 8 completions, then larger.
SIZES = {"n64-t256-h1024": (64, 256, 1024), "n128-t512-h1024": (128, 512, 1024),
         "n256-t512-h2560": (256, 512, 2560)}
SIZE_MARKS = {"n256-t512-h2560": [pytest.mark.slow]}


def _inputs(N, T, H, dtype):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, T, H, generator=g).to(dtype)
    # Completions of varied length: padding is the realistic case.
    lengths = torch.randint(T // 4, T + 1, (N,), generator=g)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    refs = torch.randn(N // 8, H, generator=g)
    index = torch.arange(N // 8).repeat_interleave(8)
    return [t.to(DEVICE) for t in (hidden, mask, refs, index)]


@pytest.mark.parametrize("size", [pytest.param(k, marks=SIZE_MARKS.get(k, [])) for k in SIZES])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("mode", ["forward"])
@pytest.mark.parametrize("impl", ["fused", "eager"])
def test_similarity(benchmark, impl, mode, dtype, size):
    N, T, H = SIZES[size]
    dtype = getattr(torch, dtype)
    hidden, mask, refs, index = _inputs(N, T, H, dtype)
    if impl == "fused":
        fn = lambda: embedding_similarity(hidden, mask, refs, index, threshold=0.2, impl=FUSED)  # noqa: E731
    else:
        fn = lambda: ref.embedding_similarity(hidden, mask, refs, index, threshold=0.2)  # noqa: E731
    torch.testing.assert_close(
        embedding_similarity(hidden, mask, refs, index, threshold=0.2, impl=FUSED),
        ref.embedding_similarity(hidden, mask, refs, index, threshold=0.2), atol=1e-4, rtol=1e-4,
    )

    def run():
        out = fn()
        sync(DEVICE)
        return out

    extra_info(benchmark, impl=FUSED if impl == "fused" else "eager", mode=mode, device=DEVICE,
               dtype=dtype, shapes={"N": N, "T": T, "H": H, "refs": N // 8},
               tokens_kept=int(mask.sum()))
    benchmark.pedantic(run, rounds=10, warmup_rounds=2, iterations=1)
