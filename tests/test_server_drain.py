"""Graceful shutdown under load: SIGTERM to `python -m server` while clients keep sending.

Cloud Run sends SIGTERM and kills the instance 10 s later. Every request already sent when the
signal arrives must still get its answer (goal: 0 failed), /readyz must turn 503 at once, and
the process must exit 0 inside the window. Requests sent after the signal may be refused (the
listener closes); they are counted apart, as Cloud Run no longer routes to a draining instance.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

from load_harness import Client, Outcome, closed_loop, encode
from server_harness import start_server

CLOUD_RUN_WINDOW_S = 10.0
CLASSIFY_CLIENTS, GENERATE_CLIENTS = 3, 4
CLIENTS = CLASSIFY_CLIENTS + GENERATE_CLIENTS
CLASSIFY = [
    encode({"texts": [f"review {i}: the film was good , then dull . " * 20] * 8}) for i in range(4)
]
GENERATE = [
    encode({"prompt": f"The movie number {i} was", "n_words": 120, "n_samples": 4})
    for i in range(4)
]


def test_sigterm_under_load_fails_no_in_flight_request(tiny_bundles: Path, tmp_path: Path) -> None:
    server = start_server(tiny_bundles, tmp_path)
    stop = threading.Event()
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def load(path: str, bodies: list[bytes], clients: int) -> None:
        result = closed_loop(server.base_url, path, bodies, clients, stop, max_seconds=60)
        with lock:
            outcomes.extend(result)

    loaders = [
        threading.Thread(target=load, args=("/classify", CLASSIFY, CLASSIFY_CLIENTS)),
        threading.Thread(target=load, args=("/generate", GENERATE, GENERATE_CLIENTS)),
    ]
    for thread in loaders:
        thread.start()
    probe = Client(server.base_url, timeout_s=5)
    exited: list[float] = []

    def wait_for_exit() -> None:  # timed in its own thread: the exit, not our bookkeeping
        server.process.wait(CLOUD_RUN_WINDOW_S + 20)
        exited.append(time.monotonic())

    try:
        time.sleep(2.0)  # every client has requests in flight
        assert probe.request("GET", "/readyz").status == 200  # and keeps its connection
        waiter = threading.Thread(target=wait_for_exit)
        sigterm_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        waiter.start()
        time.sleep(0.3)
        draining = probe.request("GET", "/readyz")
        drained_at = time.monotonic()  # the worker has the signal: it answered "draining"
        waiter.join(CLOUD_RUN_WINDOW_S + 25)
        exit_code = server.process.returncode
        exited_at = exited[0] if exited else float("inf")
    finally:
        stop.set()
        for thread in loaders:
            thread.join(90)
        if server.process.poll() is None:
            server.process.kill()

    in_flight = [o for o in outcomes if o.started < sigterm_at < o.ended]
    before = [o for o in outcomes if o.started < sigterm_at]
    after = [o for o in outcomes if o.started >= sigterm_at]
    # The master forwards the signal to the worker; a request sent in between may still be
    # answered. Once the worker has said "draining", new work is refused.
    settled = [o for o in after if o.started >= drained_at]
    # A request still in transit when the signal lands reaches a closed gate: refused cleanly as
    # draining (503 + Retry-After), it never started. Anything else not 200 is a failure.
    refused = [o for o in before if o.status == 503 and b"Shutting down" in o.body]
    failed = [o for o in before if o.status != 200 and o not in refused]
    figures = {
        "requests_before_sigterm": len(before),
        "in_flight_at_sigterm": len(in_flight),
        "failed_of_those_sent_before_sigterm": len(failed),
        "in_transit_at_sigterm_refused_as_draining": len(refused),
        "answered_after_sigterm": sum(o.ended >= sigterm_at and o.status == 200 for o in before),
        "sent_after_sigterm": len(after),
        "sent_after_sigterm_answered_503": sum(o.status == 503 for o in after),
        "sent_after_sigterm_refused_connection": sum(o.status is None for o in after),
        "sent_after_sigterm_answered_before_the_worker_drained": sum(
            o.status == 200 for o in after
        ),
        "sent_after_draining_was_seen": len(settled),
        "exit_code": exit_code,
        "exit_after_sigterm_s": round(exited_at - sigterm_at, 2),
        "readyz_while_draining": draining.status,
    }
    print("SIGTERM drain:", json.dumps(figures))
    assert len(in_flight) >= 3, figures  # the test really caught requests mid-work
    assert failed == [], (figures, failed[:3])
    assert len(refused) <= CLIENTS, figures  # at most one in transit per connection
    assert exit_code == 0, server.log()[-3000:]
    assert exited_at - sigterm_at < CLOUD_RUN_WINDOW_S, figures
    assert draining.status == 503 and b"draining" in draining.body, (draining, figures)
    # New work after the signal is answered (still in transit to the worker), refused cleanly
    # (503 + Retry-After) or not connected at all; once the worker drains, never answered.
    assert {o.status for o in after} <= {200, 503, None}, figures
    assert {o.status for o in settled} <= {503, None}, figures
    assert all(o.retry_after == "1" for o in after if o.status == 503)
    log = server.log()
    assert "SIGABRT" not in log and "Traceback" not in log, log[-3000:]
    assert any(
        json.loads(line).get("message") == "draining"
        for line in log.splitlines()
        if line.startswith("{")
    ), log[-3000:]
