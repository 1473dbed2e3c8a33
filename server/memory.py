"""Process-wide memory settings of the server: glibc malloc's, and the master's heap before fork.

Why: the gunicorn master loads the bundles and forks the worker, so every page is counted once
while shared; what malloc keeps after freeing it, and what the worker copies on write, is what
the instance pays on top (docs/configuration.md, "Memory per bundle").
"""

from __future__ import annotations

import ctypes
import gc

# glibc malloc, set before the bundles load (the forked worker inherits it). Its defaults keep
# freed memory: one arena per thread (up to 8 per core) and a mmap threshold that rises to 32 MiB
# once a large block is freed, so activations freed by onnxruntime stay resident per thread. Fixed
# here: one arena; blocks under 32 MiB come from the heap, and up to 32 MiB free at the heap top
# is kept between runs, so a run reuses the previous run's pages instead of faulting in fresh
# ones (a 750-token review's two 8.6 MB input projections cost ~4,600 page faults, ~10 ms a run,
# when mmapped); more than 32 MiB free at the top (a long batch's activations) goes back.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
MALLOC_SETTINGS = {M_ARENA_MAX: 1, M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 32 << 20}


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def tune_malloc() -> bool:
    """Apply MALLOC_SETTINGS through glibc's mallopt; False where there is none (not glibc)."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS.items())


def settle_before_fork() -> None:
    """In the master, after loading, before forking: give the heap's free pages (holes left by
    loading) back to the system, so that a worker filling them gets fresh pages instead of
    copies of pages the master keeps too; and move every object to the permanent generation,
    so the worker's garbage collections do not write to (and so copy) the master's objects."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim(0)
    gc.freeze()
