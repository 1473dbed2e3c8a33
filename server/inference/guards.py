"""Run guards: a deadline per request, a watchdog that stops onnxruntime runs outliving it, and
bounds on classifier and language-model runs at once.

Why a deadline that stops the work: a client that gave up does not need the CPU its request
would still burn. Each admitted request carries a `RequestBudget` (server/http/admission.py makes
it); generation checks it between tokens, and `RunDeadlines` terminates an onnxruntime run that
outlives it (RunOptions.terminate).
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from server.inference.errors import DeadlineExceeded

if TYPE_CHECKING:  # imported lazily in `guard`: this module stays cheap to import
    import onnxruntime as ort


# Stages of a request's time (`RequestBudget.spend`), as its Server-Timing header names them.
TOKENIZE = "tokenize"
MODEL = "model"  # onnxruntime work: waiting for a run slot or a batch, and the runs themselves


class RequestBudget:
    """One admitted request's deadline (monotonic seconds); a drain may only bring it closer.
    It also keeps where the request's time went (`spent`, seconds per stage), which the
    response's Server-Timing header reports (server/observability/requests.py)."""

    __slots__ = ("deadline", "spent", "timeout_s")

    def __init__(self, timeout_s: float, now: float | None = None) -> None:
        self.timeout_s = timeout_s
        self.deadline = (time.monotonic() if now is None else now) + timeout_s
        self.spent: dict[str, float] = {}

    @classmethod
    def unbounded(cls) -> RequestBudget:
        """For code paths outside the gate (in-process tests, the demo page)."""
        return cls(float("inf"))

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def check(self) -> None:
        """Raise the 504 once the deadline has passed (called between units of work)."""
        if self.expired():
            raise DeadlineExceeded(self.timeout_s)

    def shorten_to(self, deadline: float) -> None:
        self.deadline = min(self.deadline, deadline)

    def spend(self, stage: str, seconds: float) -> None:
        """Count `seconds` more of this request's time in `stage` (e.g. "tokenize", "model")."""
        self.spent[stage] = self.spent.get(stage, 0.0) + seconds


@dataclass
class _Run:
    """One guarded onnxruntime run: its options (the terminate flag) and whether it still runs."""

    options: ort.RunOptions
    running: bool = True


class RunDeadlines:
    """One watchdog thread that terminates onnxruntime runs which outlive their deadline.

    `guard(deadline)` hands out a fresh `RunOptions` to pass to `session.run`; when the deadline
    passes first the watchdog sets its `terminate` flag, onnxruntime abandons the run between
    nodes, and the guard turns the resulting error into DeadlineExceeded (504). The thread is
    started on first use in each process (a preloaded gunicorn master forks its workers).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Run]] = []
        self._counter = itertools.count()
        self._pid: int | None = None
        self.terminated_total = 0

    def _ensure_thread(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._heap.clear()
        threading.Thread(target=self._watch, name="run-deadlines", daemon=True).start()

    def _watch(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, _, run = heapq.heappop(self._heap)
                    if run.running:
                        run.options.terminate = True
                        self.terminated_total += 1
                timeout = self._heap[0][0] - now if self._heap else None
                self._cond.wait(timeout)

    def guard(self, deadline: float, timeout_s: float) -> _Guarded:
        """A context manager giving the run's `RunOptions`; DeadlineExceeded (504) when the
        deadline has passed before the run, or the watchdog stopped it."""
        return _Guarded(self, deadline, timeout_s)

    def _watch_run(self, run: _Run, deadline: float) -> None:
        with self._cond:
            self._ensure_thread()
            heapq.heappush(self._heap, (deadline, next(self._counter), run))
            # Wake the watchdog only when this run is now due first. A wake-up on the request
            # path hands the core to the watchdog thread and back (measured ~1.7 ms a request
            # in process on a busy core); with one REQUEST_TIMEOUT_S a later run's deadline is
            # later, so the watchdog's current wait already covers it.
            if self._heap[0][2] is run:
                self._cond.notify()


class _Guarded:
    """`RunDeadlines.guard` as a plain class (it wraps every onnxruntime run of a request)."""

    __slots__ = ("_deadline", "_deadlines", "_run", "_timeout_s")

    def __init__(self, deadlines: RunDeadlines, deadline: float, timeout_s: float) -> None:
        self._deadlines = deadlines
        self._deadline = deadline
        self._timeout_s = timeout_s
        self._run: _Run | None = None

    def __enter__(self) -> ort.RunOptions:
        import onnxruntime as ort  # already loaded by the bundles; kept lazy for cheap import

        options = ort.RunOptions()
        deadline = self._deadline
        if deadline == float("inf"):
            return options
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(self._timeout_s)
        self._run = run = _Run(options)
        self._deadlines._watch_run(run, deadline)
        return options

    def __exit__(self, kind: type[BaseException] | None, error: object, tb: object) -> None:
        run = self._run
        if run is None:
            return
        run.running = False  # the heap entry is dropped when it comes due
        if kind is not None and issubclass(kind, Exception) and run.options.terminate:
            raise DeadlineExceeded(self._timeout_s) from None


RUN_DEADLINES = RunDeadlines()


class _Slots(Protocol):
    """What a slot counter needs: a semaphore, or a lock for one slot."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...


class RunSlots:
    """At most `limit` onnxruntime runs of one kind at once in this process (CLASSIFY_RUNS for
    classifier runs, LM_RUNS for the steps of generation).

    Why: each concurrent run holds its own activations and the session's arena keeps the peak
    (classifier, one process: RSS 112 MiB after loading, 409 MiB after 8 concurrent long reviews;
    onnxruntime's arena off did not change it). On one vCPU, running them one at a time costs no
    throughput. A request waits for a slot only until its deadline (then 504). The semaphore is
    made anew in each process (a preloaded gunicorn master forks its workers).
    """

    def __init__(self, limit: int = 1) -> None:
        self.configure(limit)

    def configure(self, limit: int) -> None:
        self.limit = limit
        # One slot (the default) is a plain lock: acquired and released in C, not through the
        # semaphore's Python-level condition.
        self._semaphore: _Slots = (
            threading.Lock() if limit == 1 else threading.BoundedSemaphore(limit)
        )
        self._pid = os.getpid()

    def hold(self, deadline: float, timeout_s: float) -> _Held:
        """A context manager holding one slot; DeadlineExceeded (504) if none frees in time."""
        if self._pid != os.getpid():
            self.configure(self.limit)
        return _Held(self._semaphore, deadline, timeout_s)


class _Held:
    """`RunSlots.hold` as a plain class (it wraps every onnxruntime run of a request)."""

    __slots__ = ("_deadline", "_semaphore", "_timeout_s")

    def __init__(self, semaphore: _Slots, deadline: float, timeout_s: float) -> None:
        self._semaphore = semaphore
        self._deadline = deadline
        self._timeout_s = timeout_s

    def __enter__(self) -> None:
        wait = None if self._deadline == float("inf") else self._deadline - time.monotonic()
        if wait is not None and wait <= 0:
            raise DeadlineExceeded(self._timeout_s)
        # A free slot is taken without a timed wait (the common case: one request at a time).
        if self._semaphore.acquire(blocking=False):
            return
        if wait is None:
            self._semaphore.acquire()
        elif not self._semaphore.acquire(timeout=wait):
            raise DeadlineExceeded(self._timeout_s)

    def __exit__(self, kind: object, error: object, tb: object) -> None:
        self._semaphore.release()


CLASSIFY_RUNS = RunSlots()
LM_RUNS = RunSlots()
