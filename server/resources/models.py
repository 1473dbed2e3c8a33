"""GET /models: what is loaded, from the manifests (the same metrics export measured), plus what
only the running process knows: drift scores and the shadow comparison (server/observability/monitoring.py)."""

from __future__ import annotations

from typing import Any

import falcon

from server.http.responses import finite, send_json
from server.runtime import ServerRuntime


def describe(manifest: Any) -> dict[str, Any]:
    """The public part of a manifest: identity, task, labels and the measured metrics."""
    raw = manifest.raw
    return finite(
        {
            "name": manifest.name,
            "version": manifest.version,
            "id": manifest.model_id,
            "task": manifest.task,
            "labels": manifest.labels,
            "created_at": raw.get("created_at"),
            "quantization": raw.get("model", {}).get("quantization"),
            "metrics": raw.get("metrics", {}),
        }
    )


class ModelsResource:
    def __init__(self, runtime: ServerRuntime) -> None:
        self._entries = [
            (name, describe(model.manifest)) for name, model in runtime.models.by_name.items()
        ]
        self._monitoring = runtime.monitoring

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(
            resp,
            {
                "models": [
                    {**entry, **finite(self._monitoring.model_status(name))}
                    for name, entry in self._entries
                ]
            },
        )
