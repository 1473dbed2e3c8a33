"""How fast the host lets the server's core move memory right now, for comparing phases of a run.

Why: this is a VM on a shared host. The same LM step measured 0.7 ms and 2.2 ms minutes apart
with nothing else running in the VM (docs/benchmarks.md), so a split taken across two phases
(HTTP in one, in-process in another) can be wrong by more than the thing it splits. The run
probes before each phase and the report shows the spread; the models' work is bound by this
bandwidth (benchmarks/roofline.py), so a phase that saw less of it ran slower for that reason.

`python -m benchmarks.hostprobe` (pinned by the caller) prints one JSON line.
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks.roofline import copy_bandwidth_gbs

L3_BYTES = 8 * 2**20  # well inside this machine's L3: the models' weights live there when hot
DRAM_BYTES = 128 * 2**20  # far past any L3 we run on
# Back-to-back probes on a quiet host differed by up to ~12 % (70.1 vs 79.6 GB/s L3); past this
# the phases ran on a host that was measurably slower at some point.
COMPARABLE_SPREAD = 0.15


def measure() -> dict[str, Any]:
    return {
        "l3_copy_gb_per_s": round(copy_bandwidth_gbs(L3_BYTES, repeats=20), 1),
        "dram_copy_gb_per_s": round(copy_bandwidth_gbs(DRAM_BYTES, repeats=5), 1),
    }


def spread(probes: list[dict[str, Any]], key: str) -> float | None:
    """Slowest probe's shortfall against the fastest, as a fraction (0.25: 25 % slower)."""
    values = [p[key] for p in probes if p.get(key)]
    if len(values) < 2:
        return None
    return round(1 - min(values) / max(values), 3)


def main() -> int:
    print(json.dumps(measure()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
