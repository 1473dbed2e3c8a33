"""Probes: /healthz says the process answers, /readyz says it should get traffic."""

from __future__ import annotations

import falcon

from server.http.errors import NotReady
from server.http.responses import send_json
from server.runtime import ServerRuntime


class HealthResource:
    """Liveness: no model work, so a busy or warming server still counts as alive."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(resp, {"status": "ok"})


class ReadinessResource:
    """200 only once the bundles are loaded and every session has run one inference."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self._readiness = runtime.readiness

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        state = self._readiness.state
        if state != "ready":
            raise NotReady(state)
        send_json(resp, {"status": "ready"})
