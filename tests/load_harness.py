"""Load for the hardening tests (overload, SIGTERM drain, soak): loopback only, bounded in time
and count, every request's outcome kept (when it started, how it ended) rather than only the
successes, because these tests are about what happens to the requests that do not succeed.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

LOOPBACK = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Outcome:
    """One request: monotonic start/end, HTTP status (None: transport error), what went wrong."""

    started: float
    ended: float
    status: int | None
    error: str | None = None
    retry_after: str | None = None
    body: bytes = b""
    sent: float | None = None  # open loop: when it was really sent (started = when scheduled)

    @property
    def latency_ms(self) -> float:
        return (self.ended - self.started) * 1000

    @property
    def server_ms(self) -> float:
        """From the actual send: what the server took, without the client's own lag."""
        return (self.ended - (self.sent if self.sent is not None else self.started)) * 1000

    @property
    def lag_ms(self) -> float:
        return ((self.sent if self.sent is not None else self.started) - self.started) * 1000


def _address(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    if parts.hostname not in LOOPBACK:
        raise ValueError(f"load only on loopback, not {parts.hostname}")
    return parts.hostname or "127.0.0.1", parts.port or 80


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()


class Client:
    """One keep-alive connection (reopened after an error); `post` never raises."""

    def __init__(self, base_url: str, timeout_s: float = 60) -> None:
        self._host, self._port = _address(base_url)
        self._timeout = timeout_s
        self._connection: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None) -> Outcome:
        started = time.monotonic()
        try:
            if self._connection is None:
                self._connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
            headers = {"Content-Type": "application/json"} if body is not None else {}
            self._connection.request(method, path, body=body, headers=headers)
            response = self._connection.getresponse()
            data = response.read()
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            return Outcome(
                started,
                time.monotonic(),
                response.status,
                retry_after=response.getheader("Retry-After"),
                body=data,
            )
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Outcome(started, time.monotonic(), None, f"{type(exc).__name__}: {exc}")

    def post(self, path: str, body: bytes) -> Outcome:
        return self.request("POST", path, body)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def closed_loop(
    base_url: str,
    path: str,
    bodies: Sequence[bytes],
    clients: int,
    stop: threading.Event,
    max_seconds: float,
) -> list[Outcome]:
    """`clients` threads, each sending its next request when the last is answered, until `stop`
    is set or `max_seconds` pass. Keeps going after transport errors (a refused connection
    is an outcome too), pausing briefly so a dead server is not hammered."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    until = time.monotonic() + max_seconds

    def run(offset: int) -> None:
        client = Client(base_url)
        index = offset
        while not stop.is_set() and time.monotonic() < until:
            outcome = client.post(path, bodies[index % len(bodies)])
            index += clients
            with lock:
                outcomes.append(outcome)
            if outcome.status is None:
                time.sleep(0.05)
        client.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max_seconds + 120)
    return outcomes


def open_loop(
    base_url: str,
    path: str,
    bodies: Sequence[bytes],
    rate_per_s: float,
    seconds: float,
    max_pending: int = 256,
) -> list[Outcome]:
    """Requests sent on a fixed schedule (`rate_per_s`), whatever the answers: the offered load
    does not slow down when the server does, as real traffic does not. Each request has its own
    connection. `started` is the scheduled time and `sent` the real one, so the client's own
    lag is visible rather than hidden in (or silently added to) the server's latency."""
    interval = 1.0 / rate_per_s
    total = int(seconds * rate_per_s)
    start = time.monotonic() + 0.05
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        scheduled = start + index * interval
        client = Client(base_url)
        outcome = client.post(path, bodies[index % len(bodies)])
        client.close()
        with lock:
            outcomes.append(
                Outcome(
                    scheduled,
                    outcome.ended,
                    outcome.status,
                    outcome.error,
                    outcome.retry_after,
                    sent=outcome.started,
                )
            )

    with ThreadPoolExecutor(max_workers=max_pending) as pool:
        for index in range(total):
            delay = start + index * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, index)
    return outcomes


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def worker_pid(master_pid: int) -> int | None:
    """The gunicorn worker: the master's only child (Linux /proc)."""
    try:
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssSampler:
    """Samples a process's resident memory every `interval_s` in a background thread."""

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []  # (monotonic, MB)
        self._stop = threading.Event()
        self._interval = interval_s
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = rss_mb(self.pid)
            if value is not None:
                self.samples.append((time.monotonic(), value))
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def env_seconds(name: str, default: float) -> float:
    """A test duration that an operator can stretch (e.g. SOAK_SECONDS=60 for the report)."""
    return float(os.environ.get(name) or default)
