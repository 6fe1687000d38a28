"""Summarise a pytest-benchmark JSON (``--benchmark-json``) of the GRPO kernel suites as a
Markdown table: median time per case, its ratio to the baseline of the same group
(eager, or Liger where present), and the memory recorded in extra_info: "peak extra" =
peak memory of one step minus the memory with the inputs allocated; "workspace" = peak
extra minus the gradients the step must return (dL/dW + dL/dhidden, the same for every
implementation; recorded by the fused-loss suite only).

    python -m ftib.bench.ratios bench-results.json
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict


def _key(bench: dict) -> tuple[str, str]:
    params = dict(bench.get("params") or {})
    impl = params.pop("impl", "?")
    return bench["name"].split("[")[0] + " " + ",".join(f"{v}" for v in params.values()), impl


def _mib(x: float | None) -> str:
    return "" if x is None else f"{x:.0f}"


def table(path: str) -> str:
    data = json.loads(open(path, encoding="utf-8").read())
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for b in data["benchmarks"]:
        case, impl = _key(b)
        groups[case][impl] = b
    rows = ["| case | impl | median (ms) | eager / impl | liger / impl | peak extra (MiB) "
            "| peak extra / eager's | workspace (MiB) | peak RSS (MiB) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    any_work = False
    for case in sorted(groups):
        impls = groups[case]
        med = {k: v["stats"]["median"] * 1e3 for k, v in impls.items()}
        for impl, b in sorted(impls.items()):
            info = b.get("extra_info", {})
            eager = f"{med['eager'] / med[impl]:.2f}x" if "eager" in med else "-"
            liger = f"{med['liger'] / med[impl]:.2f}x" if "liger" in med else "-"
            extra = info.get("peak_extra_mib")
            work = info.get("workspace_mib")
            any_work = any_work or work is not None
            peak = info.get("peak_rss_mib", info.get("peak_total_mib"))
            eager_extra = impls.get("eager", {}).get("extra_info", {}).get("peak_extra_mib")
            vs_eager = f"{extra / eager_extra:.3f}" if extra is not None and eager_extra else "-"
            rows.append(
                f"| {re.sub(r'^test_', '', case)} | {info.get('impl', impl)} | {med[impl]:.2f} | "
                f"{eager} | {liger} | {_mib(extra)} | {vs_eager} | {_mib(work)} | {_mib(peak)} |"
            )
    machine = data.get("machine_info", {})
    head = f"{machine.get('cpu', {}).get('brand_raw', '')} — {data.get('datetime', '')}"
    note = ""
    if any_work:
        note = ("\n\npeak extra: peak memory of one step minus the memory with the inputs "
                "allocated; workspace: peak extra minus the gradients the step returns "
                "(dL/dW + dL/dhidden, equal for every implementation).")
    return head + "\n\n" + "\n".join(rows) + note


if __name__ == "__main__":
    print(table(sys.argv[1]))
