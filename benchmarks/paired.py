"""The overhead target measured paired: HTTP requests to our server and bare onnxruntime runs of
the same reviews in a second process on the server's pinned core, alternating in short blocks.

Why: the overhead is a difference of two ~20 ms figures, and this host's speed drifts by tens of
percent between the phases of a run (the report's host probes). Taken from the latency phase
and the in-process phase, the same server code gave 0.9 to 3.7 ms. Interleaved request by
request, both sides see the same moments of the host.
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

from benchmarks.loadgen import check_answer, exchange, latency_stats, require_loopback
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
    session_ms: list[float] = []
    try:
        for _ in range(rounds):
            for index, body in enumerate(bodies):
                for _ in range(PER_BLOCK):
                    http_ms.append(_post(connection, body))
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
    }


def _post(connection: http.client.HTTPConnection, body: bytes) -> float:
    """One /classify on the kept-alive connection, in ms; anything but a good answer stops the
    run (the load generator's own exchange and check)."""
    status, data, elapsed_ms, _, problem = exchange(connection, "/classify", body)
    problem = problem or check_answer(status, data, "label")[0]
    if problem:
        raise RuntimeError(f"/classify: {problem}")
    return elapsed_ms
