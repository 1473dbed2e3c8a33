"""Peak memory of a serving process tree while it is under load.

Two views, because a preloaded gunicorn master and its forked worker share most pages:
VmHWM (each process's own peak resident set, read once at the end; summing them double-counts
shared pages) and the tree's PSS (shared pages split between sharers, so the sum counts each
page once: what the container's memory limit sees), sampled while the load runs.
"""

from __future__ import annotations

import threading
from typing import Any

from benchmarks import procfs

SAMPLE_EVERY_S = 0.25


class MemorySampler:
    """Samples the tree's PSS in a background thread; `finish()` adds each process's VmHWM."""

    def __init__(self, root_pid: int, every_s: float = SAMPLE_EVERY_S) -> None:
        self.root_pid = root_pid
        self.every_s = every_s
        self.peak_pss_kib = 0
        self.ready_pss_kib: int | None = None  # the first sample: loaded, warmed, no load yet
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
        self.peak_pss_kib = max(self.peak_pss_kib, pss)
        self.samples += 1

    def finish(self) -> dict[str, Any]:
        """Call while the server still runs (before SIGTERM): VmHWM is per live process."""
        self.sample()
        peaks = procfs.tree_peak_rss_kib(self.root_pid)
        children = {pid: kib for pid, kib in peaks.items() if pid != self.root_pid}
        return {
            "peak_tree_pss_mib": round(self.peak_pss_kib / 1024, 1),
            "ready_tree_pss_mib": round((self.ready_pss_kib or 0) / 1024, 1),
            "pss_samples": self.samples,
            "root_vmhwm_mib": round(peaks.get(self.root_pid, 0) / 1024, 1),
            "max_child_vmhwm_mib": round(max(children.values(), default=0) / 1024, 1),
            "sum_vmhwm_mib": round(sum(peaks.values()) / 1024, 1),
            "processes": len(peaks),
        }
