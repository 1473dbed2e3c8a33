"""A small closed-loop HTTP load generator: N threads, one keep-alive connection each, loopback only.

Why closed loop: each thread sends its next request when the previous answer is in, so
"concurrency 8" means 8 requests in flight, which is what a gthread worker (or a sync worker's
accept queue) sees behind Cloud Run's concurrency setting. Bounded twice: by a request count and
by a time budget after which no new request starts (those in flight still finish and count).
Every response is checked (status 200 and the expected JSON key); failures are counted, not timed.

Our server's answers carry a Server-Timing header (its time in the app, tokenizing and on the
model); each successful request keeps it, so a cell splits its latency by what the server itself
timed in the same requests (`server_timing` in the summary), with no second run to compare with.

Why `http.client` and not `requests`: on loopback the client's own cost is part of every number,
and requests adds about 1-5 ms of Python per call (measured here), more than our server's whole
overhead. Bodies are JSON-encoded before the clock starts. A server that closes the connection
after each answer (gunicorn's sync worker does) gets a new one, as `requests` would do.
"""

from __future__ import annotations

import contextlib
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
    stages_ms: list[dict[str, float]] = field(default_factory=list)  # Server-Timing, per request
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
            "server_timing": server_timing_split(self.latencies_ms, self.stages_ms),
        }


def parse_server_timing(header: str | None) -> dict[str, float]:
    """`a;dur=1.5, b;dur=2` -> {"a": 1.5, "b": 2.0} (ms); metrics without a duration are left out."""
    stages: dict[str, float] = {}
    for metric in (header or "").split(","):
        name, _, params = metric.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur" and name:
                with contextlib.suppress(ValueError):
                    stages[name] = float(value.strip('"'))
    return stages


def server_timing_split(
    latencies_ms: Sequence[float], stages_ms: Sequence[dict[str, float]]
) -> dict[str, Any] | None:
    """Per stage the p50 the server reported, and, paired request by request, the p50 of what
    each spent outside the app (latency - `app`: HTTP, gunicorn, the client), around the model
    (latency - `model`) and in the app outside every named stage (`app_rest`). None when the
    answers carried no Server-Timing."""
    if not stages_ms or len(stages_ms) != len(latencies_ms) or not all(stages_ms):
        return None
    names = [name for name in stages_ms[0] if all(name in s for s in stages_ms)]
    split: dict[str, Any] = {
        f"{name}_p50_ms": round(float(np.median([s[name] for s in stages_ms])), 3) for name in names
    }
    for stage, key in (("app", "outside_app_p50_ms"), ("model", "over_model_p50_ms")):
        if stage in names:
            paired = [t - s[stage] for t, s in zip(latencies_ms, stages_ms, strict=True)]
            split[key] = round(float(np.median(paired)), 3)
    if "app" in names:  # the app's time in none of the named stages (parsing, JSON, metrics)
        rest = [s["app"] - sum(v for k, v in s.items() if k != "app") for s in stages_ms]
        split["app_rest_p50_ms"] = round(float(np.median(rest)), 3)
    return split


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
                status, data, elapsed_ms, timing, problem = exchange(
                    connection, workload.path, encoded[index]
                )
                answer = None
                if problem is None:
                    problem, answer = check_answer(status, data, workload.expect_key)
                with lock:
                    if problem:
                        result.errors += 1
                        result.error_examples.append(problem[:300])
                    else:
                        result.latencies_ms.append(elapsed_ms)
                        result.stages_ms.append(parse_server_timing(timing))
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


def exchange(
    connection: http.client.HTTPConnection, path: str, body: bytes | None
) -> tuple[int, bytes, float, str | None, str | None]:
    """One request/response on a kept-alive connection: (status, body, ms, its Server-Timing
    header, transport problem)."""
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
        return response.status, data, elapsed_ms, response.getheader("Server-Timing"), None
    except (OSError, http.client.HTTPException) as exc:
        connection.close()
        return 0, b"", 0.0, None, f"{type(exc).__name__}: {exc}"


def check_answer(status: int, data: bytes, expect_key: str) -> tuple[str | None, Any]:
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
