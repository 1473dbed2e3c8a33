"""GET /models: what is loaded, from the manifests (the same metrics export measured), which
bundle answers each task by default, plus what only the running process knows: drift scores and
the shadow comparison (server/observability/monitoring.py)."""

from __future__ import annotations

from typing import Any

import falcon

from bundle import ClassifierModel, Manifest
from server.http.responses import finite, send_json
from server.inference.loading import Model
from server.runtime import ServerRuntime


def describe(manifest: Manifest) -> dict[str, Any]:
    """The public part of a manifest: identity, task, labels and the measured metrics."""
    raw = manifest.raw
    return finite(
        {
            "name": manifest.name,
            "version": manifest.version,
            "id": manifest.model_id,
            "task": manifest.task,
            "labels": manifest.labels,
            "direction": "backward" if manifest.backwards else "forward",
            "created_at": raw.get("created_at"),
            "quantization": raw.get("model", {}).get("quantization"),
            "metrics": raw.get("metrics", {}),
        }
    )


def entry(model: Model, default: bool) -> dict[str, Any]:
    described = describe(model.manifest)
    described["default"] = default
    if isinstance(model, ClassifierModel):
        described["multi_label"] = model.multi_label
        described["threshold"] = model.threshold
        described["short_input"] = model.manifest.raw.get("short_input")  # bundle/calibration.py
    return described


class ModelsResource:
    def __init__(self, runtime: ServerRuntime) -> None:
        models = runtime.models
        defaults = {models.default_classifier, models.default_language_model}
        self._entries = [
            (name, entry(model, name in defaults)) for name, model in models.by_name.items()
        ]
        self._monitoring = runtime.monitoring

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(
            resp,
            {
                "models": [
                    {**listed, **finite(self._monitoring.model_status(name))}
                    for name, listed in self._entries
                ]
            },
        )
