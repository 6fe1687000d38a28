"""Summarise a pytest-benchmark JSON (``--benchmark-json``) of the GRPO kernel suites as a
Markdown table: median time per case, its ratio to the baseline of the same group
(eager, or Liger where present), and the peak memory recorded in extra_info.

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


def table(path: str) -> str:
    data = json.loads(open(path, encoding="utf-8").read())
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for b in data["benchmarks"]:
        case, impl = _key(b)
        groups[case][impl] = b
    rows = ["| case | impl | median (ms) | eager / impl | liger / impl | peak extra (MiB) | peak RSS (MiB) |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for case in sorted(groups):
        impls = groups[case]
        med = {k: v["stats"]["median"] * 1e3 for k, v in impls.items()}
        for impl, b in sorted(impls.items()):
            info = b.get("extra_info", {})
            eager = f"{med['eager'] / med[impl]:.2f}x" if "eager" in med else "-"
            liger = f"{med['liger'] / med[impl]:.2f}x" if "liger" in med else "-"
            extra = info.get("peak_extra_mib")
            peak = info.get("peak_rss_mib", info.get("peak_total_mib"))
            rows.append(
                f"| {re.sub(r'^test_', '', case)} | {info.get('impl', impl)} | {med[impl]:.2f} | "
                f"{eager} | {liger} | {'' if extra is None else f'{extra:.0f}'} | "
                f"{'' if peak is None else f'{peak:.0f}'} |"
            )
    machine = data.get("machine_info", {})
    head = f"{machine.get('cpu', {}).get('brand_raw', '')} — {data.get('datetime', '')}"
    return head + "\n\n" + "\n".join(rows)


if __name__ == "__main__":
    print(table(sys.argv[1]))
