"""POST /classify: one review or a batch, always one onnxruntime call (shared with concurrent
requests when micro-batching is on), stopped at the request's deadline."""

from __future__ import annotations

from typing import Any

import falcon

from server.batching import classifier_runner
from server.body import read_json_object
from server.errors import InvalidRequest, NoModelForTask
from server.limits import request_budget
from server.responses import send_json
from server.runtime import ServerRuntime
from server.validation import reject_unknown_fields, required_text, text_list

PROBABILITY_DECIMALS = 6


def label_result(labels: list[str], row: Any) -> dict[str, Any]:
    """{label, probabilities} for one row of the model's softmax output."""
    probabilities = {
        label: round(float(p), PROBABILITY_DECIMALS) for label, p in zip(labels, row, strict=True)
    }
    return {"label": labels[int(row.argmax())], "probabilities": probabilities}


class ClassifyResource:
    def __init__(self, runtime: ServerRuntime) -> None:
        self._settings = runtime.settings
        self._model = runtime.models.classifier
        self._monitoring = runtime.monitoring
        self._batcher = runtime.classify_batcher
        self._run = (
            classifier_runner(self._model, runtime.settings.classify_max_tokens)
            if self._model is not None
            else None
        )

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        settings = self._settings
        body = read_json_object(req, settings.max_body_bytes)
        reject_unknown_fields(body, ("text", "texts"))
        if ("text" in body) == ("texts" in body):
            raise InvalidRequest("Send exactly one of 'text' (a string) or 'texts' (an array).")
        if "text" in body:
            texts = [required_text(body, "text", settings.max_text_chars)]
        else:
            texts = text_list(body, "texts", settings.max_batch_texts, settings.max_text_chars)
        if self._model is None:
            raise NoModelForTask("classify")
        ids = [self._model.tokenizer.encode(text) for text in texts]
        budget = request_budget(req)
        budget.check()
        if self._batcher is not None:
            probabilities = self._batcher.predict(ids, budget)
        else:
            assert self._run is not None
            probabilities = self._run(ids, budget.deadline, budget.timeout_s)
        labels = self._model.labels
        self._monitoring.classified(texts, labels, probabilities)  # shadow candidate, if any
        results = [label_result(labels, row) for row in probabilities]
        model_id = self._model.manifest.model_id
        if "text" in body:
            send_json(resp, {**results[0], "model": model_id})
        else:
            send_json(resp, {"results": results, "model": model_id})
