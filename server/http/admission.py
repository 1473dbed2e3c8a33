"""Overload protection: bounded admission with an immediate 503.

Why shed instead of queue: on one vCPU every queued request only adds its service time to the
latency of all that follow, so past a point a queue turns every answer into a timeout. The gate
admits at most WEB_THREADS requests; the next POST gets 503 + Retry-After at once, which a
client or load balancer can act on. gunicorn runs a few threads more than that (gunicorn.conf.py)
so the 503s and the probes are answered while the admitted requests compute. Each admitted
request gets a `RequestBudget` (its deadline, server/inference/guards.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import falcon

from server.http.errors import Overloaded, ShuttingDown
from server.inference.guards import RequestBudget

RETRY_AFTER_S = 1
GATED_METHODS = frozenset({"POST"})  # model work; GETs (probes, /models, /metrics) stay open


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

    def __init__(self, stream: Iterable[bytes], release: Callable[[], None]) -> None:
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
    """Falcon middleware: gate POSTs, put the budget on `req.context.budget`, free the slot.
    The budget's `spent` stays on `req.context.spent` for the Server-Timing header."""

    def __init__(self, gate: AdmissionGate) -> None:
        self._gate = gate

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.method in GATED_METHODS:
            req.context.budget = budget = self._gate.admit()
            req.context.spent = budget.spent

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
