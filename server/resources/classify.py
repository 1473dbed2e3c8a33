"""POST /classify: parse the body, ask the classify service, write the answer."""

from __future__ import annotations

from typing import Any

import falcon
import numpy as np

from bundle import ClassifierModel
from server.config import Settings
from server.http.admission import request_budget
from server.http.body import read_json_object
from server.http.errors import InvalidRequest
from server.http.responses import send_json
from server.http.validation import optional_model, reject_unknown_fields, required_text, text_list
from server.runtime import ServerRuntime

PROBABILITY_DECIMALS = 6


def label_result(model: ClassifierModel, row: np.ndarray) -> dict[str, Any]:
    """One text's answer: {label, probabilities} for a single-label (softmax) model;
    {labels, probabilities, threshold} for a multi-label (per-label sigmoid) one, `labels` being
    those above the threshold, in the bundle's order (fastai's decoding)."""
    probabilities = {
        label: round(float(p), PROBABILITY_DECIMALS)
        for label, p in zip(model.labels, row, strict=True)
    }
    if model.multi_label:
        return {
            "labels": model.chosen_labels(row),
            "probabilities": probabilities,
            "threshold": model.threshold,
        }
    return {"label": model.labels[int(row.argmax())], "probabilities": probabilities}


def parse_texts(body: dict[str, Any], settings: Settings) -> tuple[list[str], bool]:
    """(texts, whether the body sent one `text` rather than a `texts` batch)."""
    reject_unknown_fields(body, ("text", "texts", "model"))
    if ("text" in body) == ("texts" in body):
        raise InvalidRequest("Send exactly one of 'text' (a string) or 'texts' (an array).")
    if "text" in body:
        return [required_text(body, "text", settings.max_text_chars)], True
    return text_list(body, "texts", settings.max_batch_texts, settings.max_text_chars), False


class ClassifyResource:
    def __init__(self, runtime: ServerRuntime) -> None:
        self._settings = runtime.settings
        self._service = runtime.classify

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req, self._settings.max_body_bytes)
        texts, single = parse_texts(body, self._settings)
        result = self._service.classify(texts, request_budget(req), optional_model(body))
        model = result.model
        model_id = model.manifest.model_id
        req.context.model_id = model_id
        results = [label_result(model, row) for row in result.probabilities]
        if single:
            send_json(resp, {**results[0], "model": model_id})
        else:
            send_json(resp, {"results": results, "model": model_id})
