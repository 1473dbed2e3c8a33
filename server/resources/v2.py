"""Open Inference Protocol (KServe v2) over HTTP/REST, beside the simple JSON API, so that
standard v2 clients (tritonclient, KServe's InferenceRESTClient, curl scripts) can call the models.

The classifier answers `label` (BYTES [n]) and `probabilities` (FP32 [n, labels], in the bundle's
label order); a multi-label classifier answers `labels` instead of `label` (BYTES [n], each the
JSON array of the labels above its threshold) and per-label sigmoid probabilities; the language model answers `text` (BYTES [n]: each prompt with its continuation),
with the /generate fields (n_words, temperature, top_k, top_p, seed, no_unk) as request
parameters. The tensors are read and written by server/http/v2_codec.py; the work is the same
classify and generate services as /classify and /generate. Errors under /v2 are
`{"error": "..."}` as the protocol says (server/http/errors.py shapes them by path).
"""

from __future__ import annotations

import json
from importlib import metadata
from typing import Any

import falcon

from bundle import ClassifierModel
from server.http.admission import request_budget
from server.http.responses import send_json
from server.http.v2_codec import (
    TEXT,
    InferRequest,
    OutputTensor,
    parse_infer_request,
    read_infer_body,
    write_infer_response,
)
from server.inference.generate import GenerationRequest
from server.inference.guards import RequestBudget
from server.inference.loading import Model
from server.resources.generate import parse_request
from server.runtime import ServerRuntime

SERVER_NAME = "fastai-onnx-serve"
PLATFORM = "onnxruntime_onnx"
GENERATION_PARAMETERS = ("n_words", "temperature", "top_k", "top_p", "seed", "no_unk")


def server_version() -> str:
    try:
        return metadata.version(SERVER_NAME)
    except metadata.PackageNotFoundError:
        return "unknown"


def label_output(model: ClassifierModel) -> str:
    """`label` (one per text) for a single-label classifier, `labels` for a multi-label one."""
    return "labels" if model.multi_label else "label"


def tensor_metadata(model: Model) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    inputs = [{"name": TEXT, "datatype": "BYTES", "shape": [-1]}]
    if isinstance(model, ClassifierModel):
        outputs = [
            {"name": label_output(model), "datatype": "BYTES", "shape": [-1]},
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [-1, len(model.manifest.labels)],
            },
        ]
    else:
        outputs = [{"name": TEXT, "datatype": "BYTES", "shape": [-1]}]
    return inputs, outputs


class V2ServerResource:
    """GET /v2 (and /v2/): server metadata."""

    def __init__(self) -> None:
        self._body = {"name": SERVER_NAME, "version": server_version(), "extensions": []}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(resp, self._body)


class V2LiveResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(resp, {"live": True})


class V2ReadyResource:
    def __init__(self, runtime: ServerRuntime) -> None:
        self._readiness = runtime.readiness

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        ready = self._readiness.ready
        send_json(resp, {"ready": ready}, falcon.HTTP_200 if ready else falcon.HTTP_503)


class V2ModelResource:
    """/v2/models/{name}[/versions/{version}]: metadata (GET), /ready (GET), /infer (POST)."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self._runtime = runtime
        self._settings = runtime.settings

    def _model(self, req: falcon.Request, name: str, version: str | None) -> Model:
        model = self._runtime.models.named(name, version)
        req.context.model_id = model.manifest.model_id
        return model

    def on_get(
        self, req: falcon.Request, resp: falcon.Response, name: str, version: str | None = None
    ) -> None:
        model = self._model(req, name, version)
        inputs, outputs = tensor_metadata(model)
        send_json(
            resp,
            {
                "name": name,
                "versions": [model.manifest.version],
                "platform": PLATFORM,
                "inputs": inputs,
                "outputs": outputs,
            },
        )

    def on_get_ready(
        self, req: falcon.Request, resp: falcon.Response, name: str, version: str | None = None
    ) -> None:
        self._model(req, name, version)
        ready = self._runtime.readiness.ready
        send_json(
            resp, {"name": name, "ready": ready}, falcon.HTTP_200 if ready else falcon.HTTP_503
        )

    def on_post_infer(
        self, req: falcon.Request, resp: falcon.Response, name: str, version: str | None = None
    ) -> None:
        model = self._model(req, name, version)
        body, binary = read_infer_body(req, self._settings.max_body_bytes)
        settings = self._settings
        task = model.manifest.task
        limit = settings.max_batch_texts if task == "classify" else settings.max_n_samples
        request = parse_infer_request(body, binary, limit, settings.max_text_chars)
        budget = request_budget(req)  # the admission gate's deadline (server/http/admission.py)
        budget.check()
        if task == "classify":
            tensors = self._classify(name, request, budget)
        else:
            tensors = self._generate(name, request, budget)
        head = {"model_name": name, "model_version": model.manifest.version}
        write_infer_response(resp, head, tensors, request)

    def _classify(
        self, name: str, request: InferRequest, budget: RequestBudget
    ) -> list[OutputTensor]:
        result = self._runtime.classify.classify(request.texts, budget, name)
        model = result.model
        if model.multi_label:
            predicted = [json.dumps(model.chosen_labels(row)) for row in result.probabilities]
        else:
            predicted = [model.labels[int(i)] for i in result.probabilities.argmax(axis=1)]
        n = request.batch_shape[0]
        return [
            OutputTensor(label_output(model), "BYTES", [n], predicted),
            OutputTensor("probabilities", "FP32", [n, len(model.labels)], result.probabilities),
        ]

    def _generate(
        self, name: str, request: InferRequest, budget: RequestBudget
    ) -> list[OutputTensor]:
        fields = {
            key: request.parameters[key]
            for key in GENERATION_PARAMETERS
            if key in request.parameters
        }
        samples: list[str] = []
        for text in request.texts:
            generation, _ = parse_request({"prompt": text, **fields}, self._settings)
            single = GenerationRequest(
                generation.prompt, generation.n_words, 1, generation.sampling, generation.seed
            )
            samples.extend(self._runtime.generate.generate(single, budget, name)[1])
        return [OutputTensor(TEXT, "BYTES", [len(samples)], samples)]


def add_v2_routes(app: falcon.App, runtime: ServerRuntime) -> None:
    """Every v2 route, with and without the optional /versions/{version} part. Server metadata
    answers at /v2 and at /v2/ alike (clients use both spellings)."""
    metadata_resource = V2ServerResource()
    app.add_route("/v2", metadata_resource)
    app.add_route("/v2/", metadata_resource, suffix=None)
    app.add_route("/v2/health/live", V2LiveResource())
    app.add_route("/v2/health/ready", V2ReadyResource(runtime))
    model = V2ModelResource(runtime)
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.add_route(prefix, model)
        app.add_route(prefix + "/ready", model, suffix="ready")
        app.add_route(prefix + "/infer", model, suffix="infer")
