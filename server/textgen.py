"""Prompt in, readable samples out: the bundle's tokenizer around `generation.generate_ids`.

Kept apart from the HTTP resource so the demo page and /generate share one code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np

from server.generation import SamplingParams, generate_ids, make_rng

if TYPE_CHECKING:
    from bundle import LanguageModel


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    n_words: int = 40
    n_samples: int = 1
    sampling: SamplingParams = SamplingParams()
    seed: int | None = None


@dataclass(frozen=True)
class Piece:
    """New readable text of one sample, as a stream event carries it."""

    sample: int
    text: str


def prompt_ids(model: "LanguageModel", prompt: str) -> list[int]:
    """fastai's predict feeds the prompt as a document: it starts with xxbos."""
    ids = [int(i) for i in model.tokenizer.encode(prompt)]
    if not ids or ids[0] != model.bos_id:
        ids.insert(0, model.bos_id)
    return ids


def _token_steps(model: "LanguageModel", request: GenerationRequest,
                 prompt: list[int]) -> Iterator[np.ndarray]:
    return generate_ids(model, prompt, request.n_words, request.n_samples, request.sampling,
                        model.unk_id, make_rng(request.seed))


def generate_texts(model: "LanguageModel", request: GenerationRequest) -> list[str]:
    """Each sample as fastai's predict returns it: the prompt and its continuation, decoded."""
    prompt = prompt_ids(model, request.prompt)
    steps = list(_token_steps(model, request, prompt))
    generated = np.stack(steps, axis=1) if steps else np.zeros((request.n_samples, 0), np.int64)
    return [model.tokenizer.decode(prompt + row.tolist()) for row in generated]


def stream_pieces(model: "LanguageModel", request: GenerationRequest,
                  samples_out: list[str]) -> Iterator[Piece]:
    """Yield the new text of each sample as each word completes; fill `samples_out` at the end.

    Each sample has its own StreamDecoder, primed with the prompt so spacing and capitalisation
    of the first new word are right; what the prompt itself produces is not re-sent.
    """
    prompt = prompt_ids(model, request.prompt)
    tokens = model.tokenizer.ids_to_tokens(prompt)
    decoders = [model.tokenizer.stream_decoder() for _ in range(request.n_samples)]
    for decoder in decoders:
        for token in tokens:
            decoder.push(token)
    histories: list[list[int]] = [list(prompt) for _ in range(request.n_samples)]
    for step in _token_steps(model, request, prompt):
        step_tokens = model.tokenizer.ids_to_tokens(step.tolist())
        for sample, (token_id, token) in enumerate(zip(step.tolist(), step_tokens)):
            histories[sample].append(int(token_id))
            text = decoders[sample].push(token)
            if text:
                yield Piece(sample, text)
    for sample, decoder in enumerate(decoders):
        text = decoder.flush()
        if text:
            yield Piece(sample, text)
    samples_out[:] = [model.tokenizer.decode(history) for history in histories]
