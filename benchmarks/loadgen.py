"""A small closed-loop HTTP load generator: N threads, one keep-alive connection each, loopback only.

Why closed loop: each thread sends its next request when the previous answer is in, so
"concurrency 8" means 8 requests in flight, which is what a gthread worker (or a sync worker's
accept queue) sees behind Cloud Run's concurrency setting. Bounded twice: by a request count and
by a time budget after which no new request starts (those in flight still finish and count).
Every response is checked (status 200 and the expected JSON key); failures are counted, not timed.

Why `http.client` and not `requests`: on loopback the client's own cost is part of every number,
and requests adds about 1-5 ms of Python per call (measured here), more than our server's whole
overhead. Bodies are JSON-encoded before the clock starts. A server that closes the connection
after each answer (gunicorn's sync worker does) gets a new one, as `requests` would do.
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Workload:
    """A named request mix: one path, bodies sent in turn (None: a GET), the key a good answer holds."""

    name: str
    path: str
    bodies: Sequence[dict[str, Any] | None]
    expect_key: str


@dataclass
class LoadResult:
    """Per-request latencies (ms, successful requests only) and what went wrong."""

    workload: str
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    body_index: list[int] = field(default_factory=list)
    answers: list[Any] = field(default_factory=list)
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def completed(self) -> int:
        return len(self.latencies_ms)

    def summary(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "concurrency": self.concurrency,
            **latency_stats(self.latencies_ms),
            "throughput_rps": round(self.completed / self.wall_s, 3) if self.wall_s else None,
            "wall_s": round(self.wall_s, 3),
            "errors": self.errors,
            "error_examples": self.error_examples[:3],
        }


def latency_stats(samples_ms: Sequence[float]) -> dict[str, Any]:
    """n, mean, min/max and p50/p95/p99 (linear interpolation) of a latency sample, in ms."""
    if not samples_ms:
        return {
            "n": 0,
            "mean_ms": None,
            "min_ms": None,
            "max_ms": None,
            "p50_ms": None,
            "p95_ms": None,
            "p99_ms": None,
        }
    data = np.asarray(samples_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(data, [50, 95, 99])
    return {
        "n": int(data.size),
        "mean_ms": round(float(data.mean()), 3),
        "min_ms": round(float(data.min()), 3),
        "max_ms": round(float(data.max()), 3),
        "p50_ms": round(float(p50), 3),
        "p95_ms": round(float(p95), 3),
        "p99_ms": round(float(p99), 3),
    }


def require_loopback(base_url: str) -> None:
    host = urlsplit(base_url).hostname
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"the load generator only targets loopback, not {host!r}")


def run_load(
    base_url: str,
    workload: Workload,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    timeout_s: float = 600.0,
    keep_answers: bool = False,
) -> LoadResult:
    """Send up to `max_requests` (at least one per thread) from `concurrency` threads."""
    require_loopback(base_url)
    if concurrency < 1 or max_requests < 1 or not workload.bodies:
        raise ValueError("need concurrency >= 1, max_requests >= 1 and at least one body")
    max_requests = max(max_requests, concurrency)
    address = urlsplit(base_url)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    encoded = [None if b is None else json.dumps(b).encode() for b in workload.bodies]
    result = LoadResult(workload.name, concurrency)
    tickets = itertools.count()
    lock = threading.Lock()
    started = time.perf_counter()
    deadline = started + max_seconds

    def worker(first_ticket: int) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
        ticket = first_ticket
        try:
            while ticket < max_requests:
                index = ticket % len(encoded)
                status, data, elapsed_ms, problem = _exchange(
                    connection, workload.path, encoded[index]
                )
                answer = None
                if problem is None:
                    problem, answer = _check(status, data, workload.expect_key)
                with lock:
                    if problem:
                        result.errors += 1
                        result.error_examples.append(problem[:300])
                    else:
                        result.latencies_ms.append(elapsed_ms)
                        result.body_index.append(index)
                        result.answers.append(answer if keep_answers else None)
                    ticket = next(tickets)
                if time.perf_counter() >= deadline:
                    break
        finally:
            connection.close()

    first = [next(tickets) for _ in range(concurrency)]
    threads = [threading.Thread(target=worker, args=(t,), name=f"load-{t}") for t in first]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.wall_s = time.perf_counter() - started
    return result


def _exchange(
    connection: http.client.HTTPConnection, path: str, body: bytes | None
) -> tuple[int, bytes, float, str | None]:
    """One request/response on a kept-alive connection: (status, body, ms, transport problem)."""
    sent = time.perf_counter()
    try:
        if body is None:
            connection.request("GET", path)
        else:
            connection.request(
                "POST", path, body=body, headers={"Content-Type": "application/json"}
            )
        response = connection.getresponse()
        data = response.read()
        elapsed_ms = (time.perf_counter() - sent) * 1e3
        if response.will_close:
            connection.close()  # the next request opens a new connection (sync workers)
        return response.status, data, elapsed_ms, None
    except (OSError, http.client.HTTPException) as exc:
        connection.close()
        return 0, b"", 0.0, f"{type(exc).__name__}: {exc}"


def _check(status: int, data: bytes, expect_key: str) -> tuple[str | None, Any]:
    """(problem, the answer's `expect_key` value): a 200 with that key in a JSON object is good."""
    if status != 200:
        return f"HTTP {status}: {data[:200]!r}", None
    try:
        body = json.loads(data)
    except ValueError:
        return f"not JSON: {data[:200]!r}", None
    if not isinstance(body, dict) or expect_key not in body:
        return f"no {expect_key!r} in {str(body)[:200]}", None
    return None, body[expect_key]
