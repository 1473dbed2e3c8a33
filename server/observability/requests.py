"""Request metrics and logs, as the first Falcon middleware: counts, latency, in-flight gauge and
one JSON log line per request (severity, request id, latency, model; never the request's text),
and the Server-Timing header.

Why a request is recorded when the WSGI server closes its body, not when the app returns: the
metrics and the log line then run after the answer's bytes went out, off the client's wait (at
concurrency 1 they were ~0.15 ms of each answer), and the latency recorded includes sending it.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import falcon

from server.observability.metrics import BoundCounter, BoundHistogram, ServerMetrics

request_log = logging.getLogger("server.requests")

# Probes and scrapes arrive every few seconds: logged at DEBUG so they do not drown the rest.
QUIET_ENDPOINTS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"}
)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TRACE = re.compile(r"^([0-9a-fA-F]{32})(?:/|$)")
UNMATCHED = "unmatched"
# Statuses that never carry a body (Falcon drops it without closing it): recorded at once.
BODILESS_STATUSES = frozenset({204, 304})
# Methods become a label: anything outside HTTP's registered set is "other", so a client making
# up method names cannot create series either.
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)


def request_id_of(req: falcon.Request) -> tuple[str, str | None]:
    """(request id, Cloud Trace id): the caller's X-Request-ID if sane, else the trace id Cloud
    Run's front end sends (X-Cloud-Trace-Context), else a fresh one."""
    trace_header = req.get_header("X-Cloud-Trace-Context") or ""
    match = _TRACE.match(trace_header)
    trace_id = match.group(1).lower() if match else None
    given = req.get_header("X-Request-ID") or ""
    if _REQUEST_ID.match(given):
        return given, trace_id
    return trace_id or os.urandom(16).hex(), trace_id


def severity(status: int, endpoint: str) -> int:
    """ERROR for our faults (500...), WARNING for expected refusals (503 shed or draining, 504
    deadline), DEBUG for probes and scrapes, INFO for the rest."""
    if status >= 500 and status not in (503, 504):
        return logging.ERROR
    if endpoint in QUIET_ENDPOINTS:
        return logging.DEBUG
    return logging.WARNING if status >= 500 else logging.INFO


def server_timing(spent: dict[str, float], app_seconds: float) -> str:
    """The Server-Timing header (W3C): each stage the request spent time in, then `app`, in ms."""
    stages = [f"{stage};dur={seconds * 1e3:.3f}" for stage, seconds in spent.items()]
    stages.append(f"app;dur={app_seconds * 1e3:.3f}")
    return ", ".join(stages)


class _ObservedStream:
    """A body that reports when its last byte went out (the WSGI server calls close)."""

    def __init__(self, stream: Iterable[bytes], on_close: Callable[[], None]) -> None:
        self._stream = stream
        self._iterator: Iterator[bytes] = iter(stream)
        self._on_close: Callable[[], None] | None = on_close

    def __iter__(self) -> _ObservedStream:
        return self

    def __next__(self) -> bytes:
        return next(self._iterator)

    def close(self) -> None:
        try:
            close = getattr(self._stream, "close", None)
            if close is not None:
                close()
        finally:
            done, self._on_close = self._on_close, None
            if done is not None:
                done()


class RequestMonitor:
    """Falcon middleware: request counts, latency and in-flight gauge, and one JSON log line per
    request (severity, request id, latency, model version; never the request's text).

    It must be the first middleware, so requests that a later layer refuses (overload, auth)
    are counted too.
    """

    def __init__(
        self,
        metrics: ServerMetrics,
        route_models: dict[str, str],
        log_requests: bool,
        server_timing: bool,
    ) -> None:
        self._metrics = metrics
        self._route_models = route_models
        self._log_requests = log_requests
        self._server_timing = server_timing
        self._find_route: Callable[[str], str | None] = lambda path: None
        self._in_flight = metrics.in_flight.labels()
        # (endpoint, method, status) -> its bound request counter and latency histogram; the
        # keys are bounded (route templates, known methods, status codes).
        self._series: dict[tuple[str, str, str], tuple[BoundCounter, BoundHistogram]] = {}

    def bind_router(self, app: falcon.App) -> None:
        """Name requests that never reached routing (refused by an earlier layer) by route."""
        router = app._router  # Falcon's router; find() is its documented custom-router method

        def find(path: str) -> str | None:
            try:
                found = router.find(path)
            except Exception:  # a malformed path: counted as unmatched
                return None
            return found[3] if found else None

        self._find_route = find

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.monitor_started = time.perf_counter()
        req.context.request_id, req.context.trace_id = request_id_of(req)
        self._in_flight.inc()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        started = req.context.get("monitor_started")
        if started is None:  # process_request never ran for this request
            return
        resp.set_header("X-Request-ID", req.context.request_id)
        if self._server_timing:
            spent = req.context.get("spent") or {}  # from the admission gate's budget
            resp.set_header("Server-Timing", server_timing(spent, time.perf_counter() - started))
        finish = functools.partial(self._finish, req, resp, started)
        if req.method == "HEAD" or resp.status_code in BODILESS_STATUSES:
            finish()  # Falcon sends no body, so none is closed
            return
        data, stream = resp.data, resp.stream
        if data is not None:  # what Falcon would send first, before any stream
            # The same bytes as a one-chunk body whose close records the request.
            resp.data = None
            resp.content_length = len(data)
            resp.stream = _ObservedStream((data,), finish)
        elif stream is not None and not hasattr(stream, "read"):
            resp.stream = _ObservedStream(stream, finish)
        else:
            finish()  # a file-like body (none today), text or media Falcon has yet to render

    def _finish(self, req: falcon.Request, resp: falcon.Response, started: float) -> None:
        seconds = time.perf_counter() - started
        self._in_flight.dec()
        endpoint = req.uri_template or self._find_route(req.path) or UNMATCHED
        status = str(resp.status_code)
        method = req.method if req.method in KNOWN_METHODS else "other"
        series = self._series.get((endpoint, method, status))
        if series is None:
            labels = {"endpoint": endpoint, "method": method, "status": status}
            series = (
                self._metrics.requests.labels(**labels),
                self._metrics.latency.labels(**labels),
            )
            self._series[(endpoint, method, status)] = series
        series[0].inc()
        series[1].observe(seconds)
        if not self._log_requests:
            return
        level = severity(resp.status_code, endpoint)
        if not request_log.isEnabledFor(level):
            return
        model = req.context.get("model_id") or self._route_models.get(endpoint)
        entry: dict[str, Any] = {
            "request_id": req.context.request_id,
            "endpoint": endpoint,
            "latency_s": round(seconds, 6),
            "model": model,
            # Cloud Logging's own request fields (the path only: a query could carry text).
            "httpRequest": {
                "requestMethod": req.method,
                "requestUrl": req.path,
                "status": resp.status_code,
                "latency": f"{seconds:.6f}s",
                "protocol": req.env.get("SERVER_PROTOCOL"),
            },
        }
        if req.context.trace_id:
            entry["trace_id"] = req.context.trace_id
        request_log.log(level, "request", extra=entry)
