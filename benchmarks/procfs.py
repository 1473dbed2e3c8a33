"""Process facts from Linux /proc: age since exec, peak and proportional memory, descendants.

Why /proc and not psutil: psutil is not a dependency of any extra, and these four numbers are
one file read each. Stdlib only, so the naive app (and anything else) can import it cheaply.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def seconds_since_exec(pid: int | None = None) -> float | None:
    """Age of a process from its start time (clock ticks after boot, 10 ms steps); None off Linux."""
    try:
        stat = (PROC / str(pid or os.getpid()) / "stat").read_bytes()
        start_ticks = int(stat.rsplit(b")", 1)[1].split()[19])  # field 22: starttime
        uptime = float((PROC / "uptime").read_bytes().split()[0])
        return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError):
        return None


def parent_pid(pid: int) -> int | None:
    try:
        stat = (PROC / str(pid) / "stat").read_bytes()
        return int(stat.rsplit(b")", 1)[1].split()[1])  # field 4: ppid
    except (OSError, ValueError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren, ...), found by scanning ppids."""
    parents: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            ppid = parent_pid(int(entry.name))
            if ppid is not None:
                parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    frontier = [pid]
    while frontier:
        children = parents.get(frontier.pop(), [])
        found.extend(children)
        frontier.extend(children)
    return sorted(found)


def status_kib(pid: int, key: str) -> int | None:
    """A `kB` field of /proc/<pid>/status, e.g. VmHWM (peak resident set) or VmRSS."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def pss_kib(pid: int) -> int | None:
    """Proportional set size now: shared pages (a preloaded master and its forked worker) are
    split between the processes sharing them, so a sum over a tree counts each page once."""
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def tree(pid: int) -> list[int]:
    return [pid, *descendants(pid)]


def tree_pss_kib(pid: int) -> int:
    return sum(p for p in (pss_kib(q) for q in tree(pid)) if p is not None)


def tree_peak_rss_kib(pid: int) -> dict[int, int]:
    """VmHWM of each live process of the tree: its own peak resident set since it started."""
    peaks = {q: status_kib(q, "VmHWM") for q in tree(pid)}
    return {q: kib for q, kib in peaks.items() if kib is not None}
