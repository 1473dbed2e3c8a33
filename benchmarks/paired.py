"""The overhead target measured paired: HTTP requests to our server and bare onnxruntime runs of
the same reviews in a second process on the server's pinned core, alternating in short blocks.

Why: the overhead is a difference of two ~20 ms figures, and this host's speed drifts by tens of
percent between the phases of a run (the report's host probes). Taken from the latency phase
and the in-process phase, the same server code gave 0.9 to 3.7 ms. Interleaved request by
request, both sides see the same moments of the host.

Each block of requests ends with two no-work round trips (GET /readyz): one right after the
last model run, one after that. Their difference is what a model run costs the Python that runs
next (its 14 MB of weights have pushed the interpreter out of the core's caches), so the floor
of the overhead (tokenizing + a no-work round trip) is also given with the round trip that really
follows a model run.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.loadgen import (
    check_answer,
    exchange,
    latency_stats,
    parse_server_timing,
    require_loopback,
    server_timing_split,
)
from benchmarks.servers import REPO, base_env, pinned

PER_BLOCK = 3  # requests, then session runs, per review in turn


class SessionWorker:
    """`python -m benchmarks.inprocess session`: bare session runs of the reviews, on demand."""

    def __init__(self, models: Path, texts: Sequence[str], cpu: int | None) -> None:
        argv = [sys.executable, "-m", "benchmarks.inprocess", "session", "--models", str(models)]
        self._process = subprocess.Popen(
            pinned(argv, cpu),
            cwd=REPO,
            env=base_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._stdin, self._stdout = self._process.stdin, self._process.stdout
        self._stdin.write(json.dumps(list(texts)) + "\n")
        self._stdin.flush()
        if self._stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError("the session worker did not start (see its stderr above)")

    def runs(self, index: int, count: int) -> list[float]:
        self._stdin.write(f"{index} {count}\n")
        self._stdin.flush()
        times: list[float] = json.loads(self._stdout.readline())
        return times

    def close(self) -> None:
        self._stdin.close()
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)


def measure(
    base_url: str, models: Path, texts: Sequence[str], cpu: int | None, rounds: int
) -> dict[str, Any]:
    """p50 of `/classify` over HTTP and of the bare session, each review in turn: PER_BLOCK
    requests, then PER_BLOCK session runs, for `rounds` passes over the reviews."""
    require_loopback(base_url)
    address = urlsplit(base_url)
    connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port or 80)
    bodies = [json.dumps({"text": text}).encode() for text in texts]
    worker = SessionWorker(models, texts, cpu)
    http_ms: list[float] = []
    stages: list[dict[str, float]] = []
    session_ms: list[float] = []
    after_model_ms: list[float] = []
    after_no_work_ms: list[float] = []
    try:
        for _ in range(rounds):
            for index, body in enumerate(bodies):
                for _ in range(PER_BLOCK):
                    elapsed_ms, timing = _post(connection, body)
                    http_ms.append(elapsed_ms)
                    stages.append(timing)
                after_model_ms.append(_readyz(connection))
                after_no_work_ms.append(_readyz(connection))
                session_ms += worker.runs(index, PER_BLOCK)
    finally:
        worker.close()
        connection.close()
    http_stats, session_stats = latency_stats(http_ms), latency_stats(session_ms)
    return {
        "reviews": len(texts),
        "rounds": rounds,
        "per_block": PER_BLOCK,
        "http": http_stats,
        "session": session_stats,
        "overhead_p50_ms": round(http_stats["p50_ms"] - session_stats["p50_ms"], 3),
        "server_timing": server_timing_split(http_ms, stages),
        "readyz_after_model": latency_stats(after_model_ms),
        "readyz_after_no_work": latency_stats(after_no_work_ms),
    }


def _post(connection: http.client.HTTPConnection, body: bytes) -> tuple[float, dict[str, float]]:
    """One /classify on the kept-alive connection: ms and the server's own Server-Timing stages;
    anything but a good answer stops the run (the load generator's own exchange and check)."""
    status, data, elapsed_ms, timing, problem = exchange(connection, "/classify", body)
    problem = problem or check_answer(status, data, "label")[0]
    if problem:
        raise RuntimeError(f"/classify: {problem}")
    return elapsed_ms, parse_server_timing(timing)


def _readyz(connection: http.client.HTTPConnection) -> float:
    """One GET /readyz (no model work) on the same connection, in ms; it must answer 200."""
    status, data, elapsed_ms, _, problem = exchange(connection, "/readyz", None)
    if problem or status != 200:
        raise RuntimeError(f"/readyz: {problem or f'HTTP {status}: {data[:200]!r}'}")
    return elapsed_ms
