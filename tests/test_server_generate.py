"""server/textgen.py on the real tiny language model: fastai's semantics with the state carried.

fastai's `LMLearner.predict` re-feeds the whole sequence for every new token; we encode the
prompt once and step one token at a time. With the fp32 graph (no per-call int8 activation
scaling) greedy decoding must pick the very same tokens both ways.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bundle import LanguageModel, load_bundle
from bundle.onnx_run import unchecked_run
from server.inference.errors import DeadlineExceeded
from server.inference.generate import GenerationRequest, generate_texts, prompt_ids, stream_pieces
from server.inference.guards import LM_RUNS, RequestBudget
from server.inference.sampling import (
    PROMPT_RUN_TOKENS,
    SamplingParams,
    generate_ids,
    make_rng,
    prompt_state,
)

PROMPT = "My favorite part was when"


@pytest.fixture(scope="module")
def lm_fp32(tiny_bundles: Path) -> LanguageModel:
    fp32 = tiny_bundles / "imdb-lm" / "model.fp32.onnx"
    if not fp32.is_file():
        pytest.skip("tiny bundles exported without --keep-fp32")
    model = load_bundle(tiny_bundles / "imdb-lm", model_path=fp32)
    assert isinstance(model, LanguageModel)
    return model


def refeed_greedy(model: LanguageModel, ids: list[int], n_words: int) -> list[int]:
    """fastai's loop: run the whole sequence from a fresh state for every new token."""
    ids = list(ids)
    for _ in range(n_words):
        logits, _ = model.step(np.asarray([ids], np.int64), model.initial_state(1))
        scores = logits[0].astype(np.float64)
        scores[model.unk_id] = -np.inf
        ids.append(int(scores.argmax()))
    return ids


def test_carried_state_equals_fastai_refeed(lm_fp32: LanguageModel) -> None:
    prompt = prompt_ids(lm_fp32, PROMPT)
    steps = generate_ids(
        lm_fp32, prompt, 30, 1, SamplingParams(temperature=0), lm_fp32.unk_id, make_rng(0)
    )
    carried = prompt + [int(step[0]) for step in steps]
    assert carried == refeed_greedy(lm_fp32, prompt, 30)


class RecordedSteps:
    """A real LanguageModel's `step`, with the length of each run's input kept."""

    def __init__(self, model: LanguageModel) -> None:
        self.model = model
        self.lengths: list[int] = []

    def initial_state(self, batch: int) -> list[np.ndarray]:
        return self.model.initial_state(batch)

    def step(self, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list]:
        self.lengths.append(ids.shape[1])
        return self.model.step(ids, state)


def long_prompt(model: LanguageModel, n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [model.bos_id, *rng.integers(4, model.vocab_size, n - 1).tolist()]


@pytest.mark.parametrize(
    "n", [1, PROMPT_RUN_TOKENS - 1, PROMPT_RUN_TOKENS, PROMPT_RUN_TOKENS + 1, 700]
)
def test_a_prompt_in_slices_answers_as_one_run_in_fp32(lm_fp32: LanguageModel, n: int) -> None:
    """Fed in runs of at most PROMPT_RUN_TOKENS with the state carried: the logits and state of
    one run over the whole prompt, to float rounding."""
    ids = long_prompt(lm_fp32, n)
    recorded = RecordedSteps(lm_fp32)
    logits, state = prompt_state(recorded, ids)
    assert recorded.lengths == [
        min(PROMPT_RUN_TOKENS, n - start) for start in range(0, n, PROMPT_RUN_TOKENS)
    ]
    whole_logits, whole_state = lm_fp32.step(np.asarray([ids]), lm_fp32.initial_state(1))
    np.testing.assert_allclose(logits, whole_logits, rtol=0, atol=1e-4)
    for got, want in zip(state, whole_state, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_int8_prompt_slices_stay_within_int8_noise(
    tiny_lm: LanguageModel, lm_fp32: LanguageModel
) -> None:
    """int8 quantizes each run's inputs with one scale, so slicing moves the logits a little:
    no further from fp32 than one int8 run is (2x allowed). Slices that lost the state between
    runs land far off (the last of 3 slices holds 3 tokens)."""
    sliced_err, whole_err = [], []
    for seed in range(4):
        ids = long_prompt(tiny_lm, 2 * PROMPT_RUN_TOKENS + 3, seed)  # a last slice of 3
        reference, _ = lm_fp32.step(np.asarray([ids]), lm_fp32.initial_state(1))
        whole, _ = tiny_lm.step(np.asarray([ids]), tiny_lm.initial_state(1))
        sliced, _ = prompt_state(tiny_lm, ids)
        sliced_err.append(np.abs(sliced - reference).mean())
        whole_err.append(np.abs(whole - reference).mean())
    assert np.mean(sliced_err) <= 2 * np.mean(whole_err)


def test_prompt_starts_with_xxbos(tiny_lm: LanguageModel) -> None:
    ids = prompt_ids(tiny_lm, PROMPT)
    assert ids[0] == tiny_lm.bos_id
    assert tiny_lm.tokenizer.ids_to_tokens(ids)[:2] == ["xxbos", "xxmaj"]


def test_no_unk_is_honoured_on_the_real_model(tiny_lm: LanguageModel) -> None:
    prompt = prompt_ids(tiny_lm, PROMPT)

    def drawn(no_unk: bool) -> np.ndarray:
        params = SamplingParams(temperature=3.0, no_unk=no_unk)
        return np.stack(
            list(generate_ids(tiny_lm, prompt, 100, 8, params, tiny_lm.unk_id, make_rng(5)))
        )

    assert not (drawn(True) == tiny_lm.unk_id).any()
    assert (drawn(False) == tiny_lm.unk_id).any()  # hot sampling does reach xxunk when allowed


def test_step_without_python_checks_answers_as_session_run(tiny_lm: LanguageModel) -> None:
    """LanguageModel.step calls onnxruntime's C++ run directly (bundle.runtime.unchecked_run):
    the same logits and state, bit for bit, as the public `session.run`; a missing input is
    still refused (by onnxruntime's own checks)."""
    assert unchecked_run(tiny_lm.session) != tiny_lm.session.run  # the C++ binding, here
    ids = np.asarray([prompt_ids(tiny_lm, PROMPT)] * 3, dtype=np.int64)
    state = tiny_lm.initial_state(3)
    logits, new_state = tiny_lm.step(ids, state)
    feed = dict(zip(tiny_lm._state_inputs, state, strict=True))
    public = tiny_lm.session.run(tiny_lm._outputs, {**feed, "input_ids": ids})
    assert np.array_equal(logits, public[0])
    assert all(np.array_equal(a, b) for a, b in zip(new_state, public[1:], strict=True))
    with pytest.raises(Exception, match="input_ids"):
        unchecked_run(tiny_lm.session)(tiny_lm._outputs, feed, None)


def test_samples_are_readable_and_stream_matches(tiny_lm: LanguageModel) -> None:
    request = GenerationRequest(PROMPT, n_words=30, n_samples=3, seed=11)
    samples = generate_texts(tiny_lm, request)
    streamed: list[str] = []
    pieces = list(stream_pieces(tiny_lm, request, streamed))
    assert streamed == samples
    for index, sample in enumerate(samples):
        assert sample.startswith(PROMPT)
        tail = "".join(piece.text for piece in pieces if piece.sample == index)
        assert sample == PROMPT + tail
        assert not any(t in sample for t in ("xxbos", "xxmaj", "xxunk", "xxpad"))


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_whole_samples_equal_the_joined_stream_over_many_draws(
    tiny_lm: LanguageModel, temperature: float
) -> None:
    """generate_texts decodes each sample after its steps, stream_pieces token by token: hot
    draws reach the decoder's special cases (xxmaj, xxrep, quotes, "< br / >", newlines)."""
    prompt = 'The ending "was" <'  # an open quote and a held "<" before the first new token
    for seed in range(12):
        request = GenerationRequest(
            prompt, n_words=60, n_samples=4, sampling=SamplingParams(temperature), seed=seed
        )
        streamed: list[str] = []
        pieces = list(stream_pieces(tiny_lm, request, streamed))
        assert generate_texts(tiny_lm, request, RequestBudget(30)) == streamed
        for index, sample in enumerate(streamed):
            tail = "".join(piece.text for piece in pieces if piece.sample == index)
            assert sample == prompt + tail


class StepsAtOnce:
    """The tiny LM, recording how many of its steps run at the same time (each step lingers a
    little so that unbounded concurrent generations would overlap)."""

    def __init__(self, model: LanguageModel) -> None:
        self._model = model
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def step(self, ids: np.ndarray, state: list[np.ndarray]) -> Any:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.002)
            return self._model.step(ids, state)
        finally:
            with self._lock:
                self.running -= 1


@pytest.mark.parametrize("limit", [1, 3])
def test_concurrent_generations_share_lm_runs(tiny_lm: LanguageModel, limit: int) -> None:
    """LM_RUNS bounds the LM steps running at once across concurrent requests; the samples are
    those of a lone request with the same seed."""
    LM_RUNS.configure(limit)
    model = StepsAtOnce(tiny_lm)
    request = GenerationRequest(PROMPT, n_words=12, n_samples=2, seed=3)
    results: list[list[str]] = []

    def one() -> None:
        results.append(generate_texts(model, request, RequestBudget(30)))

    threads = [threading.Thread(target=one) for _ in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        LM_RUNS.configure(1)
    assert model.most == limit  # never more, and the bound is what limited them
    assert results == [generate_texts(tiny_lm, request)] * 6


def test_a_generation_waits_for_an_lm_slot_within_its_deadline(tiny_lm: LanguageModel) -> None:
    LM_RUNS.configure(1)
    request = GenerationRequest(PROMPT, n_words=5, n_samples=1, seed=1)
    with LM_RUNS.hold(time.monotonic() + 10, 10), pytest.raises(DeadlineExceeded):
        generate_texts(tiny_lm, request, RequestBudget(0.2))  # another request holds the slot
    assert len(generate_texts(tiny_lm, request, RequestBudget(10))) == 1  # free again
