"""pytest-benchmark micro-benchmarks of the hot pieces, on the real tiny bundles.

Each one times a piece the server runs per request (tokenizer, one LM step, one sampling step,
a classifier batch) with few rounds, so the normal test run stays fast, and asserts that what it
timed is right. Speed is reported (pytest-benchmark's table), never asserted: targets belong to
`python -m benchmarks run` and BENCHMARKS.md.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from corpus import review

from bundle import ClassifierModel, LanguageModel
from server.inference.sampling import SamplingParams, choose_next, make_rng

ROUNDS = 20
BATCH = 8
SAMPLES = 5


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    rng = random.Random(5)
    return [review(rng, i % 2 == 0) for i in range(BATCH)]


def test_tokenizer_encode(benchmark, tiny_classifier: ClassifierModel, reviews: list[str]) -> None:
    tokenizer = tiny_classifier.tokenizer
    text = " ".join(reviews)  # a few hundred tokens, like a median IMDB review
    ids = benchmark.pedantic(tokenizer.encode, args=(text,), rounds=ROUNDS, warmup_rounds=1)
    assert ids == tokenizer.tokens_to_ids(tokenizer.tokenize(text))
    assert ids[0] == tiny_classifier.bos_id and len(ids) > 100
    assert all(0 <= i < tiny_classifier.vocab_size for i in ids)
    assert sum(i != tiny_classifier.unk_id for i in ids) > len(ids) // 2  # mostly known words


def test_one_lm_step_for_five_samples(benchmark, tiny_lm: LanguageModel) -> None:
    """The step generation repeats per word: batch of 5 samples, seq 1, state carried."""
    prompt = np.asarray([tiny_lm.tokenizer.encode("The movie was")], dtype=np.int64)
    logits, state = tiny_lm.step(prompt, tiny_lm.initial_state(1))
    batch_state = [np.repeat(layer, SAMPLES, axis=1) for layer in state]
    next_ids = np.full((SAMPLES, 1), int(logits.argmax()), dtype=np.int64)

    out_logits, out_state = benchmark.pedantic(
        tiny_lm.step, args=(next_ids, batch_state), rounds=ROUNDS, warmup_rounds=1
    )
    assert out_logits.shape == (SAMPLES, tiny_lm.vocab_size)
    assert np.isfinite(out_logits).all()
    sizes = [int(s["size"]) for s in tiny_lm.manifest.raw["states"] for _ in (0, 1)]
    assert [s.shape for s in out_state] == [(1, SAMPLES, size) for size in sizes]
    single_logits, _ = tiny_lm.step(next_ids[:1], state)
    # Five identical rows are five copies of the batch-1 step (dynamic int8 scales see the
    # same values), so a batching bug that mixes rows or states would show here.
    np.testing.assert_allclose(
        out_logits, np.repeat(single_logits, SAMPLES, axis=0), rtol=0, atol=1e-4
    )


def test_sampling_step_for_five_samples(benchmark, tiny_lm: LanguageModel) -> None:
    rng_logits = np.random.default_rng(0)
    logits = rng_logits.normal(size=(SAMPLES, tiny_lm.vocab_size)).astype(np.float32)
    logits[:, tiny_lm.unk_id] = 50.0  # the likeliest token, yet never allowed
    params = SamplingParams(temperature=1.0, top_k=20)

    def draw() -> np.ndarray:
        return choose_next(logits, params, tiny_lm.unk_id, make_rng(7))

    chosen = benchmark.pedantic(draw, rounds=ROUNDS, warmup_rounds=1)
    assert chosen.shape == (SAMPLES,) and chosen.dtype == np.int64
    assert (chosen != tiny_lm.unk_id).all()
    allowed = np.argsort(
        -np.where(np.arange(logits.shape[1]) == tiny_lm.unk_id, -np.inf, logits), axis=1
    )[:, :20]
    assert all(c in row for c, row in zip(chosen, allowed, strict=False))  # inside each row's top-k
    np.testing.assert_array_equal(chosen, draw())  # the seed reproduces the draw


def test_classifier_batch(benchmark, tiny_classifier: ClassifierModel, reviews: list[str]) -> None:
    ids = [tiny_classifier.tokenizer.encode(text) for text in reviews]
    probabilities = benchmark.pedantic(
        tiny_classifier.predict_ids, args=(ids,), rounds=ROUNDS, warmup_rounds=1
    )
    assert probabilities.shape == (BATCH, len(tiny_classifier.labels))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # Same probabilities as one review at a time, within the int8 tolerance the bundle records
    # (dynamic quantization scales over the whole batch; padding itself is exact).
    measured = tiny_classifier.manifest.metrics["quantization"][
        "max_abs_diff_probabilities_int8_vs_fp32"
    ]
    singles = np.concatenate([tiny_classifier.predict_ids([row]) for row in ids])
    np.testing.assert_allclose(probabilities, singles, rtol=0, atol=2 * measured + 0.01)
    # The tiny model learned the corpus' sentiment words: reviews alternate pos/neg.
    labels = [tiny_classifier.labels[int(i)] for i in probabilities.argmax(axis=1)]
    assert labels == ["pos" if i % 2 == 0 else "neg" for i in range(BATCH)]
