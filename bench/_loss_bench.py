"""The harness shared by the fused linear loss benchmarks (``test_bench_grpo_loss.py``,
``test_bench_linear_ce.py``): one step of an implementation (forward only or forward +
backward), its peak memory in a fresh subprocess, and the case body that checks the
implementations agree, records ``extra_info`` (STYLE item 9) and times the step.

A suite describes itself with a :class:`LossBench` (its sizes, how to build inputs and a
step) and keeps only what differs between the losses: the inputs, the call of each
implementation and the configuration it records.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from ftib.bench._kernel_bench import extra_info, measure_peak, peak_in_subprocess, sync

#: Warm-up size of the memory subprocess (V, H, tokens): one step at it runs the
#: first-call initialisation of the implementation before the measured step.
WARMUP = (1024, 64, 64)

MEMORY_NOTE = (
    "peak_extra_mib: peak RSS (CUDA: max allocated) of one step minus the memory with the "
    "inputs allocated (CPU: after a warm-up step on tiny inputs); workspace_mib: peak_extra_mib "
    "minus grads_mib, the size of the gradients the step returns (dL/dW + dL/dhidden), "
    "equal for every implementation"
)

Size = tuple[int, int, int]  # (V, H, tokens)


def loss_step(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], mode: str,
              device: torch.device) -> Callable[[], torch.Tensor]:
    """A zero-argument callable running one step of ``loss_fn`` and returning the loss.

    Args:
        loss_fn: computes the () loss.
        params: the leaves whose ``.grad`` is reset before each backward (hidden, weight).
        mode: ``"no_grad"`` (forward only, under ``torch.no_grad``) or ``"full"``
            (forward + backward).
        device: synchronised inside the step, so a CUDA timing is the kernels' wall time.
    """

    def step():
        if mode == "no_grad":
            with torch.no_grad():
                loss = loss_fn()
        else:
            for p in params:
                p.grad = None
            loss = loss_fn()
            loss.backward()
        sync(device)
        return loss

    return step


def can_import(module: str, name: str) -> bool:
    """Whether ``from module import name`` works here (for the optional liger-kernel,
    where any import failure means "not usable")."""
    try:
        return hasattr(importlib.import_module(module), name)
    except Exception:  # noqa: BLE001  (an optional package may fail to import in any way)
        return False


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossBench:
    """One fused linear loss suite.

    Attributes:
        script: the suite's file (run again as ``python -P script --measure-memory ARGS``).
        sizes: case name -> (V, H, tokens).
        slow: the case names marked ``slow``.
        rounds: case name -> timed rounds (default 2; listed cases get a warm-up round).
        make_inputs: size name or (V, H, tokens) -> the inputs dict of one case.
        make_step: (impl, inputs, mode) -> a step of :func:`loss_step`.
        device: where the cases run.
        fused_impl: the ``impl`` the fused implementation runs with on ``device``.
    """

    script: Path
    sizes: dict[str, Size]
    slow: frozenset[str]
    rounds: dict[str, int]
    make_inputs: Callable[[str | Size], dict[str, Any]]
    make_step: Callable[[str, dict[str, Any], str], Callable[[], torch.Tensor]]
    device: torch.device
    fused_impl: str

    def size_params(self) -> list:
        """pytest params of the sizes, the slow ones marked."""
        return [pytest.param(s, marks=[pytest.mark.slow] if s in self.slow else []) for s in self.sizes]

    def cases(self, impls: Sequence[str]) -> Callable:
        """Decorator: a benchmark parametrised over ``impls`` x mode (full, no_grad) x size."""

        def decorate(fn):
            for name, values in (("impl", impls), ("mode", ["full", "no_grad"]), ("size", self.size_params())):
                fn = pytest.mark.parametrize(name, values)(fn)
            return fn

        return decorate

    def grads_mib(self, size: str, mode: str) -> float:
        """Size of the float32 gradients one step returns (dL/dW and dL/dhidden), MiB."""
        if mode == "no_grad":
            return 0.0
        V, H, tokens = self.sizes[size]
        return (V * H + tokens * H) * 4 / 2**20

    def eager_fits(self, size: str) -> bool:
        """Eager keeps ~4 (tokens, V) float32 buffers alive in its backward."""
        V, H, tokens = self.sizes[size]
        need = 4 * tokens * V * 4 + 3 * V * H * 4
        if self.device.type == "cuda":
            return need < torch.cuda.get_device_properties(self.device).total_memory * 0.85
        avail = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemAvailable"))
        return need < avail * 0.85

    def measure_here(self, args: dict) -> dict:
        """Peak memory of one step of ``args`` (``impl``, ``mode``, ``size``, optional
        ``warmup``), in this (fresh) process.

        CPU only by default, a warm-up step on :data:`WARMUP` inputs first: on CUDA the
        peak counts device allocations, which one-time host-side initialisation does not
        touch, and a warm-up would compile Liger twice."""
        warmup = args.get("warmup", self.device.type == "cpu")
        if warmup:
            self.make_step(args["impl"], self.make_inputs(WARMUP), args["mode"])()
        x = self.make_inputs(args["size"])
        step = self.make_step(args["impl"], x, args["mode"])
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            step()
            peak = torch.cuda.max_memory_allocated()
            out = {"peak_extra_mib": (peak - before) / 2**20, "peak_total_mib": peak / 2**20}
        else:
            out = measure_peak(step)
        grads = self.grads_mib(args["size"], args["mode"])
        out.update(grads_mib=grads, workspace_mib=out["peak_extra_mib"] - grads, warmup=warmup)
        return out

    def run_case(self, benchmark, *, impl: str, mode: str, size: str, config: dict, liger_ok: bool,
                 liger_reason: str, shapes: dict | None = None) -> None:
        """One benchmark case: skip what cannot run here, check on the first size that the
        implementation agrees with eager before it is timed, record the step's peak
        memory (a fresh subprocess) and ``extra_info`` (``shapes``: V, H, tokens and any
        more given), then time the step."""
        if impl == "liger" and not liger_ok:
            pytest.skip(liger_reason)
        if impl == "eager" and not self.eager_fits(size):
            pytest.skip(f"eager full logits for {size} do not fit in this machine's memory")
        if mode == "no_grad" and size in self.slow:
            pytest.skip("no_grad mode is timed on the default sizes only")
        V, H, tokens = self.sizes[size]
        shapes = {"V": V, "H": H, "tokens": tokens, **(shapes or {})}
        x = self.make_inputs(size)
        if size == next(iter(self.sizes)) and mode == "full":
            want = self.make_step("eager", x, "no_grad")()
            got = self.make_step(impl, x, "no_grad")()
            torch.testing.assert_close(got.float(), want, atol=1e-5, rtol=1e-4)
        memory = peak_in_subprocess(self.script, {"impl": impl, "mode": mode, "size": size})
        extra_info(benchmark, impl=self.fused_impl if impl == "fused" else impl, mode=mode, device=self.device,
                   dtype=torch.float32, shapes=shapes, config=config, memory_note=MEMORY_NOTE, **memory)
        step = self.make_step(impl, x, mode)
        # Large cases: no warm-up round (a step takes tens of seconds on CPU; the memory
        # subprocess already ran one step of this case).
        benchmark.pedantic(step, rounds=self.rounds.get(size, 2),
                           warmup_rounds=1 if size in self.rounds else 0, iterations=1)
