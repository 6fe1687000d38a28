"""Fused linear cross-entropy vs eager cross-entropy on full logits vs Liger's
LigerFusedLinearCrossEntropyLoss (the loss of CPT, Align and SFT).

Time of one step (mode ``full``: forward + backward; ``no_grad``: forward only) with
pytest-benchmark, and peak memory of one step in a fresh subprocess, as
``bench/test_bench_grpo_loss.py`` measures them (CPU: peak RSS after a warm-up step on
tiny inputs; CUDA: max allocated). Per case in ``extra_info``:

- ``peak_extra_mib``: peak minus the memory with the inputs allocated;
- ``workspace_mib``: ``peak_extra_mib`` minus ``grads_mib``, the gradients every
  implementation must return (dL/dW + dL/dhidden, float32: 687 MiB at V = 167,680,
  H = 1,024, 8,192 tokens).

The headline case ``v168k-h1024-t8192`` is the 8B recipe's extended vocabulary
(167,680 rows = Qwen's 151,936 + the Tibetan extension, padded to 128) at H = 1,024 and
8,192 labelled tokens; it is marked ``slow`` (eager needs ~22 GB and a minute per step on
CPU) so the CI bench smoke run stays fast:

    pytest bench/test_bench_linear_ce.py --benchmark-only -m "" -k "full"
    python -m ftib.bench.ratios .benchmarks/.../*.json     # time and memory ratios

Config of every case: float32, no bias, every token labelled, reduction ``mean``, hidden
and lm_head both trainable. Liger's kernels are Triton on CUDA only: its cases skip on
CPU (and where liger-kernel does not import).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from ftib.bench._kernel_bench import extra_info, measure_peak, peak_in_subprocess, sync
from ftib.kernels.linear_ce import fused_linear_cross_entropy
from ftib.kernels.reference import linear_ce as ref

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FUSED = "triton" if DEVICE.type == "cuda" else "torch"
# name -> (V, H, tokens)
SIZES = {
    "v32k-h512-t1024": (32768, 512, 1024),
    "v168k-h1024-t2048": (167680, 1024, 2048),
    "v168k-h1024-t8192": (167680, 1024, 8192),
}
SLOW = {"v168k-h1024-t2048", "v168k-h1024-t8192"}
ROUNDS = {"v32k-h512-t1024": 5}
IMPLS = ["fused", "eager", "liger"]
WARMUP = (1024, 64, 64)
MEMORY_NOTE = (
    "peak_extra_mib: peak RSS (CUDA: max allocated) of one step minus the memory with the "
    "inputs allocated (CPU: after a warm-up step on tiny inputs); workspace_mib: peak_extra_mib "
    "minus grads_mib (dL/dW + dL/dhidden), equal for every implementation"
)


def liger_available() -> bool:
    if DEVICE.type != "cuda":
        return False  # Liger's fused linear CE is Triton on CUDA only
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss  # noqa: F401
    except Exception:  # liger-kernel is optional; any import failure means "not usable"
        return False
    return True


def make_inputs(size: str | tuple[int, int, int], dtype=torch.float32):
    V, H, tokens = SIZES[size] if isinstance(size, str) else size
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, H, generator=g).to(dtype).to(DEVICE).requires_grad_()
    weight = (torch.randn(V, H, generator=g) * H**-0.5).to(dtype).to(DEVICE).requires_grad_()
    labels = torch.randint(0, V, (tokens,), generator=g).to(DEVICE)
    return dict(hidden=hidden, weight=weight, labels=labels)


def make_step(impl: str, x: dict, mode: str):
    """A zero-argument callable running one step; returns the loss."""
    h, w, y = x["hidden"], x["weight"], x["labels"]
    if impl == "fused":
        def loss_fn():
            return fused_linear_cross_entropy(h, w, y, impl=FUSED).loss
    elif impl == "eager":
        def loss_fn():
            return ref.linear_cross_entropy(h, w, y)[0]
    else:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

        module = LigerFusedLinearCrossEntropyLoss(reduction="mean")

        def loss_fn():
            return module(w, h, y)

    def step():
        if mode == "no_grad":
            with torch.no_grad():
                loss = loss_fn()
        else:
            h.grad = None
            w.grad = None
            loss = loss_fn()
            loss.backward()
        sync(DEVICE)
        return loss

    return step


def grads_mib(size: str, mode: str) -> float:
    if mode == "no_grad":
        return 0.0
    V, H, tokens = SIZES[size]
    return (V * H + tokens * H) * 4 / 2**20


def _measure_here(args: dict) -> dict:
    warmup = DEVICE.type == "cpu"
    if warmup:
        make_step(args["impl"], make_inputs(WARMUP), args["mode"])()
    x = make_inputs(args["size"])
    step = make_step(args["impl"], x, args["mode"])
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated()
        out = {"peak_extra_mib": (peak - before) / 2**20, "peak_total_mib": peak / 2**20}
    else:
        out = measure_peak(step)
    grads = grads_mib(args["size"], args["mode"])
    out.update(grads_mib=grads, workspace_mib=out["peak_extra_mib"] - grads, warmup=warmup)
    return out


def _eager_fits(size: str) -> bool:
    """Eager keeps ~4 (tokens, V) float32 buffers alive in its backward."""
    V, H, tokens = SIZES[size]
    need = 4 * tokens * V * 4 + 3 * V * H * 4
    if DEVICE.type == "cuda":
        return need < torch.cuda.get_device_properties(DEVICE).total_memory * 0.85
    avail = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                 if line.startswith("MemAvailable"))
    return need < avail * 0.85


def _size_params():
    return [pytest.param(s, marks=[pytest.mark.slow] if s in SLOW else []) for s in SIZES]


@pytest.mark.parametrize("size", _size_params())
@pytest.mark.parametrize("mode", ["full", "no_grad"])
@pytest.mark.parametrize("impl", IMPLS)
def test_linear_ce(benchmark, impl, mode, size):
    if impl == "liger" and not liger_available():
        pytest.skip("Liger's fused linear CE needs CUDA and an importable liger-kernel")
    if impl == "eager" and not _eager_fits(size):
        pytest.skip(f"eager full logits for {size} do not fit in this machine's memory")
    if mode == "no_grad" and size in SLOW:
        pytest.skip("no_grad mode is timed on the default size only")
    V, H, tokens = SIZES[size]
    x = make_inputs(size)
    if size == "v32k-h512-t1024" and mode == "full":
        # The implementations agree before they are timed.
        want = make_step("eager", x, "no_grad")()
        got = make_step(impl, x, "no_grad")()
        torch.testing.assert_close(got.float(), want, atol=1e-5, rtol=1e-4)
    memory = peak_in_subprocess(Path(__file__), {"impl": impl, "mode": mode, "size": size})
    extra_info(benchmark, impl=FUSED if impl == "fused" else impl, mode=mode, device=DEVICE,
               dtype=torch.float32, shapes={"V": V, "H": H, "tokens": tokens},
               config={"reduction": "mean", "z_loss_weight": 0.0, "bias": False},
               memory_note=MEMORY_NOTE, **memory)
    step = make_step(impl, x, mode)
    benchmark.pedantic(step, rounds=ROUNDS.get(size, 2), warmup_rounds=1 if size in ROUNDS else 0,
                       iterations=1)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--measure-memory":
    print(json.dumps(_measure_here(json.loads(sys.argv[2]))))
