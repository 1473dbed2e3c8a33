"""POST /generate: sampled continuations of a prompt, as JSON or as server-sent events."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import falcon

from server.body import read_json_object
from server.config import Settings
from server.errors import DeadlineExceeded, NoModelForTask
from server.generation import SamplingParams
from server.limits import RequestBudget, request_budget
from server.responses import send_json
from server.runtime import ServerRuntime
from server.textgen import GenerationRequest, generate_texts, stream_pieces
from server.validation import (
    optional_bool,
    optional_int,
    optional_number,
    reject_unknown_fields,
    required_text,
)

log = logging.getLogger("server.generate")

FIELDS = (
    "prompt",
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
    """Validate the body into a GenerationRequest and the stream flag (400 on any problem)."""
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
        self._model = runtime.models.language_model
        self._monitoring = runtime.monitoring

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req, self._settings.max_body_bytes)
        request, stream = parse_request(body, self._settings)
        if self._model is None:
            raise NoModelForTask("generate")
        model_id = self._model.manifest.model_id
        budget = request_budget(req)
        if stream:
            resp.content_type = "text/event-stream; charset=utf-8"
            resp.set_header("Cache-Control", "no-cache")
            resp.set_header("X-Accel-Buffering", "no")
            resp.stream = self._events(request, model_id, budget)
            return
        samples = generate_texts(self._model, request, budget.check)
        self._monitoring.generated(model_id, request.n_words * request.n_samples)
        send_json(resp, {"samples": samples, "model": model_id})

    def _events(
        self, request: GenerationRequest, model_id: str, budget: RequestBudget
    ) -> Iterator[bytes]:
        """`word` events as words complete, then `done`; a fault mid-stream becomes `error`.

        The status line is already sent when generation runs, so a failure cannot be a 500:
        it is logged and reported as a final `error` event with no details.
        """
        assert self._model is not None
        samples: list[str] = []
        try:
            for piece in stream_pieces(self._model, request, samples, budget.check):
                yield sse_event("word", {"sample": piece.sample, "text": piece.text})
        except DeadlineExceeded as exc:
            yield sse_event("error", {"title": exc.title, "description": exc.description})
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
        self._monitoring.generated(model_id, request.n_words * request.n_samples)
        yield sse_event("done", {"samples": samples, "model": model_id})
