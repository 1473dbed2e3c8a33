"""POST /generate: sampled continuations of a prompt, as JSON or as server-sent events."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import falcon

from server.config import Settings
from server.http.admission import request_budget
from server.http.body import read_json_object
from server.http.errors import http_error
from server.http.responses import send_json
from server.http.validation import (
    optional_bool,
    optional_int,
    optional_model,
    optional_number,
    reject_unknown_fields,
    required_text,
)
from server.inference.errors import InferenceError
from server.inference.generate import GenerationRequest, Piece
from server.inference.sampling import SamplingParams
from server.runtime import ServerRuntime

log = logging.getLogger("server.generate")

FIELDS = (
    "prompt",
    "model",
    "n_words",
    "n_samples",
    "temperature",
    "top_k",
    "top_p",
    "seed",
    "no_unk",
    "stream",
)
MAX_TEMPERATURE = 10.0
MAX_TOP_K = 1_000_000
MAX_SEED = 2**63 - 1


def parse_request(body: dict[str, Any], settings: Settings) -> tuple[GenerationRequest, bool]:
    """Validate the body into a GenerationRequest and the stream flag (400 on any problem); the
    `model` field is read by the resource (`optional_model`)."""
    reject_unknown_fields(body, FIELDS)
    prompt = required_text(body, "prompt", settings.max_text_chars)
    n_words = optional_int(body, "n_words", 40, 1, settings.max_n_words)
    n_samples = optional_int(body, "n_samples", 1, 1, settings.max_n_samples)
    temperature = optional_number(body, "temperature", 1.0, 0.0, MAX_TEMPERATURE)
    top_k = optional_int(body, "top_k", None, 1, MAX_TOP_K, nullable=True)
    top_p = optional_number(body, "top_p", None, 0.0, 1.0, low_exclusive=True, nullable=True)
    seed = optional_int(body, "seed", None, 0, MAX_SEED, nullable=True)
    no_unk = optional_bool(body, "no_unk", True)
    stream = optional_bool(body, "stream", False)
    assert n_words is not None and n_samples is not None and temperature is not None
    sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, no_unk=no_unk)
    return GenerationRequest(prompt, n_words, n_samples, sampling, seed), stream


def sse_event(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class GenerateResource:
    def __init__(self, runtime: ServerRuntime) -> None:
        self._settings = runtime.settings
        self._service = runtime.generate

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req, self._settings.max_body_bytes)
        request, stream = parse_request(body, self._settings)
        name = optional_model(body)
        budget = request_budget(req)
        if stream:
            samples: list[str] = []
            model, pieces = self._service.stream(request, budget, samples, name)
            req.context.model_id = model.manifest.model_id
            resp.content_type = "text/event-stream; charset=utf-8"
            resp.set_header("Cache-Control", "no-cache")
            resp.set_header("X-Accel-Buffering", "no")
            resp.stream = _events(pieces, samples, model.manifest.model_id)
            return
        model, samples = self._service.generate(request, budget, name)
        req.context.model_id = model.manifest.model_id
        send_json(resp, {"samples": samples, "model": model.manifest.model_id})


def _events(pieces: Iterator[Piece], samples: list[str], model_id: str) -> Iterator[bytes]:
    """`word` events as words complete, then `done`; a fault mid-stream becomes `error`.

    The status line is already sent when generation runs, so a failure cannot be a 500: it is
    reported as a final `error` event, worded as server/http/errors.py words it (a deadline) or
    with no details (a bug, logged).
    """
    try:
        for piece in pieces:
            yield sse_event("word", {"sample": piece.sample, "text": piece.text})
    except InferenceError as exc:
        error = http_error(exc)
        yield sse_event("error", {"title": error.title, "description": error.description})
        return
    except Exception:
        log.exception("generation failed mid-stream")
        yield sse_event(
            "error",
            {
                "title": "Internal server error",
                "description": "Generation failed; it has been logged.",
            },
        )
        return
    yield sse_event("done", {"samples": samples, "model": model_id})
