"""Helpers shared by the benchmarks (bench/test_bench_*.py) and ``ftib profile``
(bench/stage_profiler.py): the ``extra_info`` schema (STYLE item 9), the device's name,
device synchronisation, the process's RSS from ``/proc`` and peak-memory measurement of
one call in a fresh subprocess."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("triton", "liger-kernel", "ftib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def extra_info(benchmark, *, impl: str, mode: str, device: torch.device, dtype: torch.dtype,
               shapes: dict, **more) -> None:
    benchmark.extra_info.update(
        impl=impl, mode=mode, device=device_name(device), dtype=str(dtype).removeprefix("torch."),
        shapes=shapes, versions=versions(), **more,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def status_bytes(field: str) -> int | None:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM`` ...) in bytes, or
    ``None`` where the file or the field is missing (not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _status_kib(field: str) -> int:
    """:func:`status_bytes` in KiB, for the benchmarks that need it: raises where missing."""
    value = status_bytes(field)
    if value is None:
        raise RuntimeError(f"{field} not in /proc/self/status")
    return value // 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_peak(run) -> dict[str, float]:
    """Run ``run()`` once; return RSS before, peak RSS during, and their difference (MiB).

    Called inside a fresh subprocess so earlier cases cannot inflate the peak.
    """
    import gc

    gc.collect()
    exact = reset_peak_rss()
    before = _status_kib("VmRSS")
    run()
    peak = _status_kib("VmHWM")
    return {
        "rss_before_mib": before / 1024,
        "peak_rss_mib": peak / 1024,
        "peak_extra_mib": (peak - before) / 1024,
        "peak_reset": exact,
    }


def peak_in_subprocess(script: Path, args: dict, timeout: float = 1800) -> dict:
    """Run ``python script --measure-memory '<json args>'``; it prints measure_peak's dict."""
    proc = subprocess.run(
        # -P: the script's folder must not shadow the standard library (a module named like a standard one).
        [sys.executable, "-P", str(script), "--measure-memory", json.dumps(args)],
        capture_output=True, text=True, timeout=timeout, env=dict(os.environ),
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def timed(benchmark, stat: str = "mean") -> float | None:
    """A timing statistic of the finished benchmark, or None when timing is disabled
    (``--benchmark-disable``: the CI smoke run executes each case once, untimed)."""
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return None
    return getattr(stats.stats, stat)


def per_second(amount: float, benchmark, stat: str = "mean") -> float | None:
    """``amount`` divided by the benchmark's time, or None when timing is disabled."""
    t = timed(benchmark, stat)
    return None if t is None else amount / t
