"""Peak memory of a serving process tree while it is under load.

Three views, because a preloaded gunicorn master and its forked worker share most pages:
VmHWM (each process's own peak resident set, read once at the end; summing them double-counts
shared pages); the tree's PSS, sampled while the load runs (a page shared by n processes counts
1/n in each); and the tree's own pages, each counted once (what a container's memory limit
sees). PSS alone undercounts the last: the libraries' pages are also mapped by processes outside
the tree (this benchmark's own interpreter imports numpy), and PSS splits them with those too,
9-11 MiB for our server beside one interpreter that imported the same four libraries. The own
pages come from /proc/<pid>/pagemap (frame numbers, which need CAP_SYS_ADMIN), read at ready
and at the end only (each read takes ~25 ms of the client's core); the peak is the peak PSS plus
what PSS left out at those moments (the larger), since what the load adds (heap) is the tree's
alone.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from benchmarks import procfs

SAMPLE_EVERY_S = 0.25
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PRESENT = np.uint64(1 << 63)  # pagemap entry: page present in memory
_FRAME = np.uint64((1 << 55) - 1)  # pagemap entry: its page frame number


def resident_frames(pid: int) -> np.ndarray | None:
    """Frame numbers of every resident page of a process; None where the kernel shows none
    (without CAP_SYS_ADMIN they read as 0) or the process is gone."""
    parts = []
    try:
        with (
            open(f"/proc/{pid}/maps") as maps,
            open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pagemap,
        ):
            for line in maps:
                start, end = (int(a, 16) for a in line.split(maxsplit=1)[0].split("-"))
                if start >> 47:  # [vsyscall]: kernel space, not in pagemap
                    continue
                pagemap.seek(start // PAGE_BYTES * 8)
                entries = np.frombuffer(
                    pagemap.read((end - start) // PAGE_BYTES * 8), dtype=np.uint64
                )
                parts.append(entries[(entries & _PRESENT) != 0] & _FRAME)
    except (OSError, ValueError):
        return None
    frames = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    return frames if frames.size == 0 or frames.any() else None


def tree_own_kib(root_pid: int) -> int | None:
    """Resident memory of a process tree with each page counted once, however many processes
    (in the tree or not) map it; None where frame numbers cannot be read."""
    frames = []
    for pid in procfs.tree(root_pid):
        found = resident_frames(pid)
        if found is None:
            return None
        frames.append(found)
    return int(np.unique(np.concatenate(frames)).size) * PAGE_BYTES // 1024 if frames else None


class MemorySampler:
    """Samples the tree's PSS in a background thread; `finish()` adds each process's VmHWM."""

    def __init__(self, root_pid: int, every_s: float = SAMPLE_EVERY_S) -> None:
        self.root_pid = root_pid
        self.every_s = every_s
        self.peak_pss_kib = 0
        self.ready_pss_kib: int | None = None  # the first sample: loaded, warmed, no load yet
        self.ready_own_kib: int | None = None  # the tree's own pages at that sample
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.every_s):
                return

    def sample(self) -> None:
        pss = procfs.tree_pss_kib(self.root_pid)
        if self.ready_pss_kib is None and pss > 0:  # 0: nothing readable yet
            self.ready_pss_kib = pss
            self.ready_own_kib = tree_own_kib(self.root_pid)
        self.peak_pss_kib = max(self.peak_pss_kib, pss)
        self.samples += 1

    def finish(self) -> dict[str, Any]:
        """Call while the server still runs (before SIGTERM): VmHWM is per live process."""
        self.sample()
        end_pss = procfs.tree_pss_kib(self.root_pid)
        end_own = tree_own_kib(self.root_pid)
        peaks = procfs.tree_peak_rss_kib(self.root_pid)
        children = {pid: kib for pid, kib in peaks.items() if pid != self.root_pid}
        # What PSS left out (pages the tree shares with processes outside it), the larger of
        # the two readings; None where the own pages cannot be read.
        left_out = (
            max(end_own - end_pss, self.ready_own_kib - (self.ready_pss_kib or 0))
            if end_own is not None and self.ready_own_kib is not None
            else None
        )
        return {
            "peak_tree_pss_mib": round(self.peak_pss_kib / 1024, 1),
            "ready_tree_pss_mib": round((self.ready_pss_kib or 0) / 1024, 1),
            "pss_left_out_mib": None if left_out is None else round(left_out / 1024, 1),
            "peak_tree_own_mib": (
                None if left_out is None else round((self.peak_pss_kib + left_out) / 1024, 1)
            ),
            "ready_tree_own_mib": (
                None if self.ready_own_kib is None else round(self.ready_own_kib / 1024, 1)
            ),
            "end_tree_own_mib": None if end_own is None else round(end_own / 1024, 1),
            "pss_samples": self.samples,
            "root_vmhwm_mib": round(peaks.get(self.root_pid, 0) / 1024, 1),
            "max_child_vmhwm_mib": round(max(children.values(), default=0) / 1024, 1),
            "sum_vmhwm_mib": round(sum(peaks.values()) / 1024, 1),
            "processes": len(peaks),
        }
