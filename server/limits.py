"""Overload protection: bounded admission with an immediate 503, and a deadline per request.

Why shed instead of queue: on one vCPU every queued request only adds its service time to the
latency of all that follow, so past a point a queue turns every answer into a timeout. The gate
admits at most WEB_THREADS requests; the next POST gets 503 + Retry-After at once, which a
client or load balancer can act on. gunicorn runs a few threads more than that (gunicorn.conf.py)
so the 503s and the probes are answered while the admitted requests compute.

Why a deadline that stops the work: a client that gave up does not need the CPU its request
would still burn. Each admitted request carries a `RequestBudget`; generation checks it between
tokens, and `RunDeadlines` terminates an onnxruntime run that outlives it (RunOptions.terminate).
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import falcon

from server.errors import DeadlineExceeded, Overloaded, ShuttingDown

RETRY_AFTER_S = 1
GATED_METHODS = frozenset({"POST"})  # model work; GETs (probes, /models, /metrics) stay open


class RequestBudget:
    """One admitted request's deadline (monotonic seconds); a drain may only bring it closer."""

    __slots__ = ("deadline", "timeout_s")

    def __init__(self, timeout_s: float, now: float | None = None) -> None:
        self.timeout_s = timeout_s
        self.deadline = (time.monotonic() if now is None else now) + timeout_s

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


class AdmissionGate:
    """At most `limit` requests admitted at once; `admit` never waits. Once `close`d (SIGTERM)
    it admits nothing: the requests in flight finish, new ones are told to go elsewhere."""

    def __init__(self, limit: int, timeout_s: float) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._active: set[RequestBudget] = set()
        self.closed = False
        self.admitted_total = 0
        self.shed_total = 0

    @property
    def in_flight(self) -> int:
        return len(self._active)

    def admit(self) -> RequestBudget:
        """A budget for the new request, or Overloaded (503) when `limit` are in flight."""
        with self._lock:
            if self.closed:
                self.shed_total += 1
                raise ShuttingDown(RETRY_AFTER_S)
            if len(self._active) >= self.limit:
                self.shed_total += 1
                raise Overloaded(self.limit, RETRY_AFTER_S)
            budget = RequestBudget(self.timeout_s)
            self._active.add(budget)
            self.admitted_total += 1
            return budget

    def release(self, budget: RequestBudget) -> None:
        with self._lock:
            self._active.discard(budget)

    def close(self, deadline: float) -> int:
        """Admit no more, and bring every in-flight deadline to `deadline` at the latest (SIGTERM
        drain: their work must answer before the process is killed). Returns how many were cut."""
        with self._lock:
            self.closed = True
            cut = sum(budget.deadline > deadline for budget in self._active)
            for budget in self._active:
                budget.shorten_to(deadline)
            return cut


class _ReleasingStream:
    """A streamed body that frees its admission slot when the WSGI server closes it: the work of
    a stream (generation) happens while it is iterated, after process_response has run."""

    def __init__(self, stream: Iterable[bytes], release: Any) -> None:
        self._iterator = iter(stream)
        self._stream = stream
        self._release = release

    def __iter__(self) -> Iterator[bytes]:
        return self._iterator

    def close(self) -> None:
        try:
            close = getattr(self._stream, "close", None)
            if close is not None:
                close()
        finally:
            self._release()


class AdmissionMiddleware:
    """Falcon middleware: gate POSTs, put the budget on `req.context.budget`, free the slot."""

    def __init__(self, gate: AdmissionGate) -> None:
        self._gate = gate

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.method in GATED_METHODS:
            req.context.budget = self._gate.admit()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        budget = req.context.get("budget")
        if budget is None:
            return
        req.context.budget = None  # released once, whatever follows
        if resp.stream is not None and not hasattr(resp.stream, "read"):
            released = threading.Event()

            def release() -> None:
                if not released.is_set():
                    released.set()
                    self._gate.release(budget)

            resp.stream = _ReleasingStream(resp.stream, release)
        else:
            self._gate.release(budget)


def request_budget(req: falcon.Request) -> RequestBudget:
    """The budget the gate gave this request, or an unbounded one outside the gate."""
    budget = req.context.get("budget")
    return budget if isinstance(budget, RequestBudget) else RequestBudget.unbounded()


class RunDeadlines:
    """One watchdog thread that terminates onnxruntime runs which outlive their deadline.

    `guard(deadline)` hands out a fresh `RunOptions` to pass to `session.run`; when the deadline
    passes first the watchdog sets its `terminate` flag, onnxruntime abandons the run between
    nodes, and the guard turns the resulting error into DeadlineExceeded (504). The thread is
    started on first use in each process (a preloaded gunicorn master forks its workers).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Any]] = []
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
                    _, _, entry = heapq.heappop(self._heap)
                    if entry is not None and entry[1]:  # still running
                        entry[0].terminate = True
                        self.terminated_total += 1
                timeout = self._heap[0][0] - now if self._heap else None
                self._cond.wait(timeout)

    @contextmanager
    def guard(self, deadline: float, timeout_s: float) -> Iterator[Any]:
        import onnxruntime as ort  # already loaded by the bundles; kept lazy for cheap import

        options = ort.RunOptions()
        if deadline == float("inf"):
            yield options
            return
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(timeout_s)
        entry = [options, True]  # [run options, running]
        with self._cond:
            self._ensure_thread()
            heapq.heappush(self._heap, (deadline, next(self._counter), entry))
            self._cond.notify()
        try:
            yield options
        except Exception:
            if options.terminate:
                raise DeadlineExceeded(timeout_s) from None
            raise
        finally:
            entry[1] = False  # the heap entry is dropped when it comes due


RUN_DEADLINES = RunDeadlines()


class RunSlots:
    """At most `limit` classifier runs at once in this process (CLASSIFY_RUNS).

    Why: a run's activation memory grows with the review's length, and concurrent runs add up
    (measured in one process: RSS 112 MiB after loading, 409 MiB after 8 concurrent long reviews;
    onnxruntime's arena off did not change it). On one vCPU, running them one at a time costs no
    throughput. A request waits for a slot only until its deadline (then 504). The semaphore is
    made anew in each process (a preloaded gunicorn master forks its workers).
    """

    def __init__(self, limit: int = 1) -> None:
        self.configure(limit)

    def configure(self, limit: int) -> None:
        self.limit = limit
        self._semaphore = threading.BoundedSemaphore(limit)
        self._pid = os.getpid()

    @contextmanager
    def hold(self, deadline: float, timeout_s: float) -> Iterator[None]:
        if self._pid != os.getpid():
            self.configure(self.limit)
        wait = None if deadline == float("inf") else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            raise DeadlineExceeded(timeout_s)
        if not self._semaphore.acquire(timeout=wait):
            raise DeadlineExceeded(timeout_s)
        try:
            yield
        finally:
            self._semaphore.release()


CLASSIFY_RUNS = RunSlots()
