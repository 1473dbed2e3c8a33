"""GET /metrics: every metric of this process in Prometheus text format (server/observability/metrics.py)."""

from __future__ import annotations

import falcon

from server.observability.metrics import CONTENT_TYPE, ServerMetrics


class MetricsResource:
    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE
        resp.data = self._metrics.render()
