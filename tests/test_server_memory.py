"""Process-wide memory settings of `python -m server` (server/memory.py): freed activations are
reused without page faults, a large heap top goes back to the system. Run in child interpreters,
so the test process keeps glibc's defaults."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

# An activation-sized block (a 750-token review's input projection is 8.6 MB) freed and asked
# for again: with glibc's defaults (or any mmap threshold below it) its pages come back fresh from
# the system, each one a page fault, every run; with the server's settings they are reused. And
# what piles up at the heap top past 32 MiB (a long batch's activations) still goes back.
REUSED_AND_RETURNED = """
import ctypes, resource, sys
import server.memory as memory
tuned = memory.tune_malloc() if sys.argv[1] == "tuned" else None
def touched(mib):  # written through a c_char, not a new array type: a type is a heap block
    block = bytearray(mib << 20)  # that could land above the test's blocks and pin them there
    ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(block)), 1, len(block))
    return block
def faulted_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt * 4 >> 10
def rss_mib():
    with open("/proc/self/status") as status:
        return int(next(l for l in status if l.startswith("VmRSS")).split()[1]) >> 10
block = touched(9)
del block
before = faulted_mib()
block = touched(9)
del block
refaulted = faulted_mib() - before
before = rss_mib()
blocks = [touched(12) for _ in range(4)]
del blocks
block = touched(40)
del block
print(tuned, refaulted, rss_mib() - before)
"""


def reuse(mode: str) -> tuple[str, int, int]:
    """(settings accepted, MiB faulted in again for the second 9 MiB block, MiB kept after
    freeing 4 x 12 MiB of heap and a 40 MiB block)."""
    out = subprocess.run(
        [sys.executable, "-c", REUSED_AND_RETURNED, mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    accepted, refaulted, kept = out.stdout.split()
    return accepted, int(refaulted), int(kept)


def test_freed_blocks_are_reused_and_a_large_heap_top_goes_back() -> None:
    accepted, refaulted, _ = reuse("default")
    assert accepted == "None" and refaulted >= 8  # the page faults the settings exist to avoid
    accepted, refaulted, kept = reuse("tuned")
    assert accepted == "True"  # glibc took every setting
    assert refaulted == 0
    assert kept < 8  # of the 88 MiB freed


# 32 MiB of heap blocks freed behind one kept block: free but resident until the heap is trimmed.
SETTLED = """
import gc
import server.memory as memory
memory.tune_malloc()
def rss_kib():
    with open("/proc/self/status") as status:
        return int(next(l for l in status if l.startswith("VmRSS")).split()[1])
blocks = [bytearray(64 << 10) for _ in range(512)]
kept = blocks[-1]
del blocks
before = rss_kib()
memory.settle_before_fork()
print(gc.get_freeze_count() > 0, (before - rss_kib()) >> 10)
"""


def test_settling_before_fork_returns_heap_holes_and_freezes_objects() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SETTLED], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    frozen, returned_mib = out.stdout.split()
    assert frozen == "True"
    assert int(returned_mib) >= 28
