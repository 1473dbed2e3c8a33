"""The generate service: prompt in, readable samples out (the bundle's tokenizer around
`sampling.generate_ids`), whole or as a stream of pieces.

Kept apart from the HTTP resources so /generate, v2 infer and the demo page share one code path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from bundle import LanguageModel
from bundle.tokenizer import StreamDecoder, Tokenizer
from server.inference.guards import LM_RUNS, MODEL, RequestBudget
from server.inference.loading import ModelSet
from server.inference.sampling import SamplingParams, StepModel, generate_ids, make_rng


class GenerativeModel(StepModel, Protocol):
    """What generation needs from a language model (bundle.LanguageModel, or a wrapper of one
    such as the instrumented model or a benchmark's timed stand-in)."""

    @property
    def tokenizer(self) -> Tokenizer: ...

    @property
    def bos_id(self) -> int: ...

    @property
    def unk_id(self) -> int: ...


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    n_words: int = 40
    n_samples: int = 1
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None


@dataclass(frozen=True)
class Piece:
    """New readable text of one sample, as a stream event carries it."""

    sample: int
    text: str


class BoundedSteps:
    """A language model whose every step waits for one of LM_RUNS' slots (within the request's
    deadline, then 504): concurrent generations interleave step by step, one onnxruntime run
    at a time (server/inference/guards.py says why). Each step's time, slot wait included, is
    counted as the request's model time (its Server-Timing)."""

    def __init__(self, model: GenerativeModel, budget: RequestBudget) -> None:
        self._model = model
        self._budget = budget

    def initial_state(self, batch: int) -> list[np.ndarray]:
        return self._model.initial_state(batch)

    def step(self, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        started = time.perf_counter()
        with LM_RUNS.hold(self._budget.deadline, self._budget.timeout_s):
            result = self._model.step(ids, state)
        self._budget.spend(MODEL, time.perf_counter() - started)
        return result


def prompt_ids(model: GenerativeModel, prompt: str) -> list[int]:
    """fastai's predict feeds the prompt as a document: it starts with xxbos."""
    ids = [int(i) for i in model.tokenizer.encode(prompt)]
    if not ids or ids[0] != model.bos_id:
        ids.insert(0, model.bos_id)
    return ids


def _token_steps(
    model: GenerativeModel,
    request: GenerationRequest,
    prompt: list[int],
    budget: RequestBudget | None,
) -> Iterator[np.ndarray]:
    return generate_ids(
        model if budget is None else BoundedSteps(model, budget),
        prompt,
        request.n_words,
        request.n_samples,
        request.sampling,
        model.unk_id,
        make_rng(request.seed),
    )


def join_prompt(prompt: str, continuation: str) -> str:
    """The prompt as sent, then the continuation (one space between them, not two)."""
    if prompt[-1:].isspace():
        return prompt + continuation.lstrip(" ")
    return prompt + continuation


def stream_pieces(
    model: GenerativeModel,
    request: GenerationRequest,
    samples_out: list[str],
    budget: RequestBudget | None = None,
) -> Iterator[Piece]:
    """Yield the new text of each sample as each word completes; fill `samples_out` at the end.

    Each sample has its own StreamDecoder, primed with the prompt's tokens so spacing and
    capitalisation of the first new word are right; what the prompt itself decodes to is not
    re-sent. A sample is the prompt *as sent* followed by its continuation: decoding the prompt's
    ids instead would drop its out-of-vocabulary words (xxunk is never shown). With a `budget`
    its deadline is checked before every step (then 504) and each step holds an LM_RUNS slot
    (server/inference/guards.py); without one (in-process use) neither.
    """
    prompt = prompt_ids(model, request.prompt)
    decoders = _primed_decoders(model, prompt, request.n_samples)
    continuations = [""] * request.n_samples
    if budget is not None:
        budget.check()
    for step in _token_steps(model, request, prompt, budget):
        if budget is not None:
            budget.check()
        for sample, token in enumerate(model.tokenizer.ids_to_tokens(step.tolist())):
            text = decoders[sample].push(token)
            if text:
                continuations[sample] += text
                yield Piece(sample, text)
    for sample, decoder in enumerate(decoders):
        text = decoder.flush()
        if text:
            continuations[sample] += text
            yield Piece(sample, text)
    samples_out[:] = [join_prompt(request.prompt, text) for text in continuations]


def _primed_decoders(model: GenerativeModel, prompt: list[int], n: int) -> list[StreamDecoder]:
    """One StreamDecoder per sample, fed the prompt's tokens (their text is not re-sent)."""
    prompt_tokens = model.tokenizer.ids_to_tokens(prompt)
    decoders = [model.tokenizer.stream_decoder() for _ in range(n)]
    for decoder in decoders:
        for token in prompt_tokens:
            decoder.push(token)
    return decoders


def generate_texts(
    model: GenerativeModel, request: GenerationRequest, budget: RequestBudget | None = None
) -> list[str]:
    """The samples in one piece: the same steps as `stream_pieces` (deadline and slot per step),
    then each sample decoded once by the same primed StreamDecoder, so both answers are
    identical (a StreamDecoder's pieces joined are its decode, bundle/tokenizer.py).

    Why not drain the stream: per token its decoding ran right after an LM step, whose weights
    had just pushed the interpreter's code and data out of the caches; after the loop the same
    work runs warm (5 x 40 measured in the commit that made this change).
    """
    prompt = prompt_ids(model, request.prompt)
    if budget is not None:
        budget.check()
    steps: list[np.ndarray] = []
    for step in _token_steps(model, request, prompt, budget):
        if budget is not None:
            budget.check()
        steps.append(step)
    decoders = _primed_decoders(model, prompt, request.n_samples)
    samples = []
    per_sample = np.stack(steps, axis=1).tolist() if steps else [[]] * request.n_samples
    for decoder, ids in zip(decoders, per_sample, strict=True):
        text = "".join([decoder.push(token) for token in model.tokenizer.ids_to_tokens(ids)])
        samples.append(join_prompt(request.prompt, text + decoder.flush()))
    return samples


# After each finished generation: (model id, tokens sampled), e.g. a metrics counter.
GenerateListener = Callable[[str, int], None]


class GenerateService:
    """The one generate path of /generate, v2 infer and the demo page: picks the named (or
    default) language model, runs within the request's budget, tells listeners when done."""

    def __init__(self, models: ModelSet) -> None:
        self.models = models
        self.listeners: list[GenerateListener] = []

    def generate(
        self, request: GenerationRequest, budget: RequestBudget, model_name: str | None = None
    ) -> tuple[LanguageModel, list[str]]:
        model = self.models.language_model(model_name)
        samples = generate_texts(model, request, budget)
        self._done(model, request)
        return model, samples

    def stream(
        self,
        request: GenerationRequest,
        budget: RequestBudget,
        samples_out: list[str],
        model_name: str | None = None,
    ) -> tuple[LanguageModel, Iterator[Piece]]:
        """The model (picked now: an unknown name fails before any byte is sent) and the
        pieces; `samples_out` holds the whole samples once the iterator is exhausted."""
        model = self.models.language_model(model_name)

        def pieces() -> Iterator[Piece]:
            yield from stream_pieces(model, request, samples_out, budget)
            self._done(model, request)

        return model, pieces()

    def _done(self, model: LanguageModel, request: GenerationRequest) -> None:
        for listener in self.listeners:
            listener(model.manifest.model_id, request.n_words * request.n_samples)
