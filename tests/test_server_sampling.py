"""Unit tests of server/generation.py: the sampling rules and the state-carrying loop, in numpy.

The distribution is checked against fastai's own formula (softmax, xxunk zeroed, then
`probs ** (1 / temperature)` renormalised), computed independently here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from server.inference.sampling import (
    COLUMN_CUMSUM,
    CUMSUM_AXIS0_ONNX,
    Sampler,
    SamplingParams,
    choose_next,
    generate_ids,
    make_rng,
    next_token_probabilities,
    sample_from,
)

UNK = 0


def fastai_distribution(logits: np.ndarray, temperature: float, no_unk: bool) -> np.ndarray:
    """LMLearner.predict's sampling distribution, written from its documented steps."""
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    if no_unk:
        probs[:, UNK] = 0.0
    probs = probs ** (1.0 / temperature)
    return probs / probs.sum(axis=1, keepdims=True)


@pytest.fixture
def logits() -> np.ndarray:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 50)).astype(np.float32)
    values[:, UNK] = 10.0  # xxunk is the favourite: no_unk must still never pick it
    return values


@pytest.mark.parametrize("temperature", [0.3, 0.75, 1.0, 2.5])
@pytest.mark.parametrize("no_unk", [True, False])
def test_distribution_matches_fastai(logits: np.ndarray, temperature: float, no_unk: bool) -> None:
    ours = next_token_probabilities(logits, SamplingParams(temperature, no_unk=no_unk), UNK)
    expected = fastai_distribution(logits.astype(np.float64), temperature, no_unk)
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-12)


def test_no_unk_never_emits_unk(logits: np.ndarray) -> None:
    rng = make_rng(1)
    params = SamplingParams(temperature=1.5, no_unk=True)
    drawn = np.concatenate([choose_next(logits, params, UNK, rng) for _ in range(2000)])
    assert UNK not in drawn
    greedy = choose_next(logits, SamplingParams(temperature=0, no_unk=True), UNK, rng)
    assert UNK not in greedy
    with_unk = choose_next(logits, SamplingParams(temperature=0, no_unk=False), UNK, rng)
    assert (with_unk == UNK).all()


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-30])
def test_a_tiny_temperature_is_greedy_not_nan(logits: np.ndarray, temperature: float) -> None:
    """Dividing by a denormal temperature once overflowed to inf - inf = NaN (the fuzzer found
    it): the limit is greedy, and xxunk stays excluded."""
    params = SamplingParams(temperature=temperature, no_unk=True)
    with np.errstate(invalid="raise"):  # inf - inf (NaN) fails here
        probs = next_token_probabilities(logits, params, UNK)
    masked = logits.copy()
    masked[:, UNK] = -np.inf
    assert np.isfinite(probs).all() and (probs[:, UNK] == 0).all()
    np.testing.assert_array_equal(probs.argmax(axis=1), masked.argmax(axis=1))
    np.testing.assert_allclose(probs.max(axis=1), 1.0)
    drawn = choose_next(logits, params, UNK, make_rng(3))
    np.testing.assert_array_equal(drawn, masked.argmax(axis=1))


def test_greedy_is_argmax_of_allowed(logits: np.ndarray) -> None:
    chosen = choose_next(logits, SamplingParams(temperature=0), UNK, make_rng(0))
    masked = logits.copy()
    masked[:, UNK] = -np.inf
    np.testing.assert_array_equal(chosen, masked.argmax(axis=1))


@pytest.mark.parametrize("k", [1, 2, 5, 49])
def test_top_k_keeps_exactly_the_k_most_likely(logits: np.ndarray, k: int) -> None:
    probs = next_token_probabilities(logits, SamplingParams(1.0, top_k=k), UNK)
    for row_logits, row in zip(logits, probs, strict=True):
        allowed = row_logits.copy()
        allowed[UNK] = -np.inf
        best = set(np.argsort(-allowed)[:k].tolist())
        assert set(np.flatnonzero(row).tolist()) == best
        assert row.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9, 1.0])
def test_top_p_keeps_the_smallest_nucleus(logits: np.ndarray, p: float) -> None:
    full = next_token_probabilities(logits, SamplingParams(1.0), UNK)
    cut = next_token_probabilities(logits, SamplingParams(1.0, top_p=p), UNK)
    for full_row, cut_row in zip(full, cut, strict=True):
        kept = np.flatnonzero(cut_row)
        order = np.argsort(-full_row)
        n = len(kept)
        assert set(order[:n].tolist()) == set(kept.tolist())  # the most likely ones
        assert full_row[kept].sum() >= min(p, 1.0) - 1e-12  # they reach p ...
        assert full_row[order[: n - 1]].sum() < p  # ... and one fewer would not
        np.testing.assert_allclose(cut_row[kept], full_row[kept] / full_row[kept].sum())


def test_sampling_frequencies_follow_the_distribution() -> None:
    probs = np.array([[0.0, 0.5, 0.3, 0.2, 0.0]])
    rng = make_rng(7)
    draws = np.concatenate([sample_from(np.repeat(probs, 100, axis=0), rng) for _ in range(200)])
    counts = np.bincount(draws, minlength=5) / draws.size
    np.testing.assert_allclose(counts, probs[0], atol=0.01)


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, (4, 12), elements=st.floats(0, 1)), st.integers(0, 2**32))
def test_sample_never_picks_zero_probability(weights: np.ndarray, seed: int) -> None:
    weights[:, 3] = 0.0
    weights[:, 5] += 1e-3  # every row has some mass
    probs = weights / weights.sum(axis=1, keepdims=True)
    chosen = sample_from(probs, make_rng(seed))
    assert (probs[np.arange(4), chosen] > 0).all()


class BigramModel:
    """A real (tiny) stateful LM in numpy: the state is the last token id, logits from a table.

    It records every call so the test can check the loop's shape: prompt once, then one
    token per step, samples batched.
    """

    def __init__(self, vocab: int = 20, seed: int = 3) -> None:
        self.table = np.random.default_rng(seed).normal(size=(vocab, vocab)).astype(np.float32)
        self.calls: list[tuple[int, int]] = []

    def initial_state(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((1, batch, 1), np.float32), np.zeros((1, batch, 1), np.float32)]

    def step(self, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        assert ids.dtype == np.int64 and ids.shape[0] == state[0].shape[1]
        self.calls.append(ids.shape)
        last = ids[:, -1]
        new_state = [last.astype(np.float32)[None, :, None], state[1] + ids.shape[1]]
        return self.table[last], new_state


def test_prompt_encoded_once_then_one_step_per_token() -> None:
    model = BigramModel()
    steps = list(
        generate_ids(
            model,
            [2, 5, 7, 9],
            n_words=6,
            n_samples=3,
            params=SamplingParams(0.8),
            unk_id=UNK,
            rng=make_rng(0),
        )
    )
    assert len(steps) == 6 and all(s.shape == (3,) for s in steps)
    assert model.calls == [(1, 4)] + [(3, 1)] * 5  # no wasted step after the last token


def test_generated_tokens_follow_the_carried_state() -> None:
    model = BigramModel()
    steps = list(
        generate_ids(
            model,
            [2, 5],
            n_words=5,
            n_samples=1,
            params=SamplingParams(temperature=0),
            unk_id=UNK,
            rng=make_rng(0),
        )
    )
    previous = 5
    for step in steps:
        row = model.table[previous].copy()
        row[UNK] = -np.inf
        assert step[0] == row.argmax()
        previous = int(step[0])


def test_seed_reproduces_and_different_seeds_differ() -> None:
    def run(seed: int) -> np.ndarray:
        params = SamplingParams(1.0, top_k=10, top_p=0.95)
        return np.stack(list(generate_ids(BigramModel(), [2], 30, 4, params, UNK, make_rng(seed))))

    np.testing.assert_array_equal(run(42), run(42))
    assert not np.array_equal(run(42), run(43))


def test_sampling_params_reject_bad_values() -> None:
    for bad in (
        {"temperature": -0.1},
        {"temperature": float("nan")},
        {"top_k": 0},
        {"top_p": 0.0},
        {"top_p": 1.5},
    ):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def _plain_draws(logits: np.ndarray, params: SamplingParams, seed: int, steps: int) -> np.ndarray:
    rng = make_rng(seed)
    return np.stack([choose_next(logits, params, UNK, rng) for _ in range(steps)])


def _fast_draws(logits: np.ndarray, params: SamplingParams, seed: int, steps: int) -> np.ndarray:
    rng = make_rng(seed)
    sampler = Sampler(params, UNK, *logits.shape)
    return np.stack([sampler(logits, rng) for _ in range(steps)])


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(),
        SamplingParams(temperature=0.75),
        SamplingParams(temperature=0),
        SamplingParams(temperature=5e-324),
        SamplingParams(temperature=2.0, no_unk=False),
        SamplingParams(top_k=1),
        SamplingParams(top_k=40, temperature=0.8),
        SamplingParams(top_p=0.05),
        SamplingParams(top_p=0.9),
        SamplingParams(top_p=0.999, temperature=3.0),
        SamplingParams(top_k=500, top_p=0.5),
    ],
    ids=repr,
)
@pytest.mark.parametrize("seed", [0, 7])
def test_fast_sampler_draws_what_the_plain_path_draws(params: SamplingParams, seed: int) -> None:
    """The server's Sampler keeps the seeded stream of the plain functions (docs/api.md: the same
    seed and fields give the same samples): equal probabilities bit for bit, equal tokens."""
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(5, 20_008)) * 3).astype(np.float32)
    logits[:, 100:140] = logits[:, 99:100]  # ties at the top-k / nucleus cut
    assert np.array_equal(
        _fast_draws(logits, params, seed, 30), _plain_draws(logits, params, seed, 30)
    )
    if params.temperature > 0:
        fast = Sampler(params, UNK, *logits.shape).probabilities(logits)
        assert np.array_equal(fast, next_token_probabilities(logits, params, UNK))


@settings(max_examples=60, deadline=None)
@given(
    logits=arrays(np.float32, (3, 300), elements=st.floats(-20, 20, width=32)),
    temperature=st.sampled_from([0.0, 0.3, 1.0, 4.0]),
    top_k=st.one_of(st.none(), st.integers(1, 300)),
    top_p=st.one_of(st.none(), st.floats(0.01, 1.0)),
    seed=st.integers(0, 2**32),
)
def test_fast_sampler_equals_plain_on_any_logits(
    logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None, seed: int
) -> None:
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    assert np.array_equal(
        _fast_draws(logits, params, seed, 5), _plain_draws(logits, params, seed, 5)
    )


def test_the_cumsum_graph_is_what_onnx_helper_builds() -> None:
    """The served bytes are the one-node graph they claim to be (rebuilt with the dev extra)."""
    onnx = pytest.importorskip("onnx")
    helper, proto = onnx.helper, onnx.TensorProto
    dims = ["vocab", "rows"]
    graph = helper.make_graph(
        [helper.make_node("CumSum", ["x", "axis"], ["y"])],
        "cumsum",
        [helper.make_tensor_value_info("x", proto.DOUBLE, dims)],
        [helper.make_tensor_value_info("y", proto.DOUBLE, dims)],
        [helper.make_tensor("axis", proto.INT64, [], [0])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 14)], producer_name="fastai-onnx-serve"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    assert model.SerializeToString() == CUMSUM_AXIS0_ONNX


def test_column_cumsum_equals_numpy_cumsum_bit_for_bit() -> None:
    rng = np.random.default_rng(5)
    probs = rng.random((5, 20_008)) ** 8  # spread magnitudes: rounding differs by order
    probs /= probs.sum(axis=1, keepdims=True)
    columns = np.ascontiguousarray(probs.T)
    assert np.array_equal(COLUMN_CUMSUM(columns).T, np.cumsum(probs, axis=1))


class _TopOfTheRange:
    """A generator stand-in whose draws make u * total == total (what rounding u * total up
    gives): past every cdf entry, the edge where both samplers fall back to the last allowed
    token."""

    def random(self, shape: tuple[int, int]) -> np.ndarray:
        return np.ones(shape)


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(top_k=3)], ids=repr)
def test_fast_sampler_edge_of_the_cdf_matches_plain(params: SamplingParams) -> None:
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(4, 997)).astype(np.float32)
    fixed: Any = _TopOfTheRange()
    plain = choose_next(logits, params, UNK, fixed)
    fast = Sampler(params, UNK, *logits.shape)(logits, fixed)
    assert np.array_equal(fast, plain)
    probs = next_token_probabilities(logits, params, UNK)
    assert (probs[np.arange(4), fast] > 0).all()
