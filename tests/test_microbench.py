"""pytest-benchmark micro-benchmarks of the hot pieces, on the real tiny bundles.

Each one times a piece the server runs per request (tokenizer, one LM step, one sampling step,
a classifier batch) with few rounds, so the normal test run stays fast, and asserts that what it
timed is right. Speed is reported (pytest-benchmark's table), never asserted: targets belong to
`python -m benchmarks run` and BENCHMARKS.md.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from corpus import review

from bundle import ClassifierModel, LanguageModel, load_bundle
from server.inference.sampling import SamplingParams, choose_next, make_rng

ROUNDS = 20
BATCH = 8
SAMPLES = 5


@pytest.fixture(scope="module")
def classifier(tiny_bundles: Path) -> ClassifierModel:
    model = load_bundle(tiny_bundles / "imdb-sentiment")
    assert isinstance(model, ClassifierModel)
    return model


@pytest.fixture(scope="module")
def language_model(tiny_bundles: Path) -> LanguageModel:
    model = load_bundle(tiny_bundles / "imdb-lm")
    assert isinstance(model, LanguageModel)
    return model


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    rng = random.Random(5)
    return [review(rng, i % 2 == 0) for i in range(BATCH)]


def test_tokenizer_encode(benchmark, classifier: ClassifierModel, reviews: list[str]) -> None:
    tokenizer = classifier.tokenizer
    text = " ".join(reviews)  # a few hundred tokens, like a median IMDB review
    ids = benchmark.pedantic(tokenizer.encode, args=(text,), rounds=ROUNDS, warmup_rounds=1)
    assert ids == tokenizer.tokens_to_ids(tokenizer.tokenize(text))
    assert ids[0] == classifier.bos_id and len(ids) > 100
    assert all(0 <= i < classifier.vocab_size for i in ids)
    assert sum(i != classifier.unk_id for i in ids) > len(ids) // 2  # mostly known words


def test_one_lm_step_for_five_samples(benchmark, language_model: LanguageModel) -> None:
    """The step generation repeats per word: batch of 5 samples, seq 1, state carried."""
    prompt = np.asarray([language_model.tokenizer.encode("The movie was")], dtype=np.int64)
    logits, state = language_model.step(prompt, language_model.initial_state(1))
    batch_state = [np.repeat(layer, SAMPLES, axis=1) for layer in state]
    next_ids = np.full((SAMPLES, 1), int(logits.argmax()), dtype=np.int64)

    out_logits, out_state = benchmark.pedantic(
        language_model.step, args=(next_ids, batch_state), rounds=ROUNDS, warmup_rounds=1
    )
    assert out_logits.shape == (SAMPLES, language_model.vocab_size)
    assert np.isfinite(out_logits).all()
    sizes = [int(s["size"]) for s in language_model.manifest.raw["states"] for _ in (0, 1)]
    assert [s.shape for s in out_state] == [(1, SAMPLES, size) for size in sizes]
    single_logits, _ = language_model.step(next_ids[:1], state)
    # Five identical rows are five copies of the batch-1 step (dynamic int8 scales see the
    # same values), so a batching bug that mixes rows or states would show here.
    np.testing.assert_allclose(
        out_logits, np.repeat(single_logits, SAMPLES, axis=0), rtol=0, atol=1e-4
    )


def test_sampling_step_for_five_samples(benchmark, language_model: LanguageModel) -> None:
    rng_logits = np.random.default_rng(0)
    logits = rng_logits.normal(size=(SAMPLES, language_model.vocab_size)).astype(np.float32)
    logits[:, language_model.unk_id] = 50.0  # the likeliest token, yet never allowed
    params = SamplingParams(temperature=1.0, top_k=20)

    def draw() -> np.ndarray:
        return choose_next(logits, params, language_model.unk_id, make_rng(7))

    chosen = benchmark.pedantic(draw, rounds=ROUNDS, warmup_rounds=1)
    assert chosen.shape == (SAMPLES,) and chosen.dtype == np.int64
    assert (chosen != language_model.unk_id).all()
    allowed = np.argsort(
        -np.where(np.arange(logits.shape[1]) == language_model.unk_id, -np.inf, logits), axis=1
    )[:, :20]
    assert all(c in row for c, row in zip(chosen, allowed, strict=False))  # inside each row's top-k
    np.testing.assert_array_equal(chosen, draw())  # the seed reproduces the draw


def test_classifier_batch(benchmark, classifier: ClassifierModel, reviews: list[str]) -> None:
    ids = [classifier.tokenizer.encode(text) for text in reviews]
    probabilities = benchmark.pedantic(
        classifier.predict_ids, args=(ids,), rounds=ROUNDS, warmup_rounds=1
    )
    assert probabilities.shape == (BATCH, len(classifier.labels))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # Same probabilities as one review at a time, within the int8 tolerance the bundle records
    # (dynamic quantization scales over the whole batch; padding itself is exact).
    measured = classifier.manifest.metrics["quantization"][
        "max_abs_diff_probabilities_int8_vs_fp32"
    ]
    singles = np.concatenate([classifier.predict_ids([row]) for row in ids])
    np.testing.assert_allclose(probabilities, singles, rtol=0, atol=2 * measured + 0.01)
    # The tiny model learned the corpus' sentiment words: reviews alternate pos/neg.
    labels = [classifier.labels[int(i)] for i in probabilities.argmax(axis=1)]
    assert labels == ["pos" if i % 2 == 0 else "neg" for i in range(BATCH)]
