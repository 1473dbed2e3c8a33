"""GET /openapi.json: the hand-written spec (server/openapi.json) with this deployment's limits.

The limits are env vars, so the documented maxima are filled in from Settings at start-up:
the spec a client (or a fuzzer) reads is the contract this process actually enforces. So are the
names and versions of the loaded models, the only values the /v2/models/{name} routes accept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import falcon

from server.config import Settings
from server.http.responses import dumps
from server.inference.loading import ModelSet

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.json"


def build_spec(settings: Settings, models: ModelSet | None = None) -> dict[str, Any]:
    spec = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    schemas = spec["components"]["schemas"]
    schemas["Text"]["maxLength"] = settings.max_text_chars
    schemas["ClassifyRequest"]["properties"]["texts"]["maxItems"] = settings.max_batch_texts
    generate = schemas["GenerateRequest"]["properties"]
    generate["n_words"]["maximum"] = settings.max_n_words
    generate["n_samples"]["maximum"] = settings.max_n_samples
    if models is not None:  # the names each "model" field accepts (null: the default)
        by_task = {
            "ClassifyRequest": sorted(models.classifiers),
            "GenerateRequest": sorted(models.language_models),
            "TokenizeRequest": sorted(models.by_name),
        }
        for schema, names in by_task.items():
            own = schemas[schema]["properties"]["model"]
            own.pop("$ref", None)  # the shared ModelChoice, with this task's names
            own.update({**schemas["ModelChoice"], **own, "enum": [*names, None]})
    parameters = spec["components"].get("parameters", {})
    if models is not None and "ModelName" in parameters:
        loaded = sorted(models.by_name.values(), key=lambda m: m.manifest.name)
        parameters["ModelName"]["schema"]["enum"] = [m.manifest.name for m in loaded]
        parameters["ModelVersion"]["schema"]["enum"] = sorted({m.manifest.version for m in loaded})
    return spec


class OpenAPIResource:
    def __init__(self, settings: Settings, models: ModelSet | None = None) -> None:
        self._spec = dumps(build_spec(settings, models))

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._spec
