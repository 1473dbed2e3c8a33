"""Graceful SIGTERM drain in the gunicorn worker.

Cloud Run sends SIGTERM and kills the instance 10 s later. gunicorn's gthread worker already
stops accepting and lets in-flight requests finish within GRACEFUL_TIMEOUT_S; this adds what it
cannot know: /readyz turns 503 at once (a load balancer still probing stops sending); a request
that still arrives on a kept-alive connection is answered 503 + Retry-After instead of starting
work that could not finish; and every in-flight request's deadline is cut to the grace period
minus a margin, so a long /generate answers 504 itself instead of being killed mid-response.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from typing import Any, Protocol

from server.http.admission import AdmissionGate

log = logging.getLogger("server.shutdown")


class Drainable(Protocol):
    """What a drain changes: the readiness probe's answer and the admission gate."""

    @property
    def admission(self) -> AdmissionGate: ...

    def begin_draining(self) -> bool: ...


ANSWER_MARGIN_S = 1.0  # time left after the cut deadline to write the 504 and exit


def begin_drain(runtime: Drainable, grace_s: float) -> None:
    """Readiness to 503, admit no more, and every deadline within `grace_s - ANSWER_MARGIN_S`."""
    runtime.begin_draining()
    until = time.monotonic() + max(grace_s - ANSWER_MARGIN_S, 0.0)
    cut = runtime.admission.close(until)
    log.info(
        "draining",
        extra={"in_flight": runtime.admission.in_flight, "deadlines_cut": cut, "grace_s": grace_s},
    )


class _Config(Protocol):
    graceful_timeout: float


class GunicornWorker(Protocol):
    """What the drain needs of gunicorn's worker: its config and its own SIGTERM handler."""

    cfg: _Config

    def handle_exit(self, signum: int, frame: Any) -> None: ...


def install_sigterm_drain(worker: GunicornWorker, runtime: Drainable) -> None:
    """Run `begin_drain` before gunicorn's own SIGTERM handling in this worker."""
    gunicorn_handler: Callable[[int, Any], None] = worker.handle_exit

    def on_sigterm(signum: int, frame: Any) -> None:
        begin_drain(runtime, float(worker.cfg.graceful_timeout))
        gunicorn_handler(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
