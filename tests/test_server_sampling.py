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
    SOFTMAX_DRAW_ONNX,
    TOP_K_GRAPH_MAX,
    TOP_K_ONNX,
    Sampler,
    SamplingParams,
    block_size,
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


def _fast_counts(
    logits: np.ndarray, params: SamplingParams, rows: int, calls: int, seed: int
) -> np.ndarray:
    """How often the server's Sampler draws each token from one row of logits."""
    batch = np.repeat(logits[None], rows, axis=0)
    sampler = Sampler(params, UNK, rows, logits.size)
    rng = make_rng(seed)
    counts = np.zeros(logits.size, dtype=np.int64)
    for _ in range(calls):
        counts += np.bincount(sampler(batch.copy(), rng), minlength=logits.size)
    return counts


def _chi_square_p(counts: np.ndarray, expected_probs: np.ndarray) -> float:
    """Pearson's test of the counts against the plain path's distribution; tokens expected
    fewer than 5 times are pooled into one cell (only the drawable ones: zero stays zero)."""
    stats = pytest.importorskip("scipy.stats")
    expected = expected_probs * counts.sum()
    single = expected >= 5
    observed = np.append(counts[single], counts[~single].sum())
    wanted = np.append(expected[single], expected[~single].sum())
    if wanted[-1] < 5:
        observed, wanted = observed[:-1], wanted[:-1]
    assert len(observed) > 10, "too few drawable tokens for the test to mean anything"
    return float(stats.chisquare(observed, wanted * observed.sum() / wanted.sum()).pvalue)


def _lm_like_logits(vocab: int, seed: int) -> np.ndarray:
    """A few likely tokens over a long tail, ties at the top-k / nucleus cuts, xxunk likely."""
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=vocab) * 2.0).astype(np.float32)
    logits[rng.choice(vocab, 30, replace=False)] += 6.0
    logits[100:110] = logits[99] if vocab > 110 else logits[100:110]
    logits[UNK] = 9.0
    return logits


DISTRIBUTION_CASES = [
    (20_008, SamplingParams()),  # the shipped LM's vocabulary: blocks of 122, no padding
    (2_003, SamplingParams()),  # a prime vocabulary: padded blocks of 128
    (2_000, SamplingParams(temperature=0.75)),
    (2_000, SamplingParams(temperature=2.5, no_unk=False)),
    (2_000, SamplingParams(top_k=40, temperature=0.8)),
    (2_000, SamplingParams(top_k=TOP_K_GRAPH_MAX + 100)),  # numpy's partial sort
    (2_000, SamplingParams(top_p=0.9)),
    (2_000, SamplingParams(top_p=0.999, temperature=3.0)),
    (2_000, SamplingParams(top_k=500, top_p=0.95, temperature=1.5)),
]


@pytest.mark.parametrize(("vocab", "params"), DISTRIBUTION_CASES, ids=repr)
def test_fast_sampler_samples_the_plain_distribution(vocab: int, params: SamplingParams) -> None:
    """40,000 draws against the exact distribution computed the plain way (float64): the
    chi-square test must not reject it, and no token of probability 0 is ever drawn."""
    logits = _lm_like_logits(vocab, seed=vocab)
    expected = next_token_probabilities(logits[None], params, UNK)[0]
    counts = _fast_counts(logits, params, rows=100, calls=400, seed=1)
    assert counts[expected == 0].sum() == 0
    assert _chi_square_p(counts, expected) > 1e-3


def test_the_chi_square_check_notices_a_slightly_wrong_temperature() -> None:
    """The check above has the power to fail: draws at temperature 0.75 are rejected against
    the distribution at 0.8."""
    logits = _lm_like_logits(2_000, seed=2_000)
    counts = _fast_counts(logits, SamplingParams(temperature=0.75), rows=100, calls=400, seed=1)
    expected = next_token_probabilities(logits[None], SamplingParams(temperature=0.8), UNK)[0]
    assert _chi_square_p(counts, expected) < 1e-6


def _allowed(logits: np.ndarray) -> np.ndarray:
    masked = logits.astype(np.float64)
    masked[:, UNK] = -np.inf
    return masked


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0),
        SamplingParams(temperature=1e-300),
        SamplingParams(temperature=5e-324),
        SamplingParams(temperature=1e-30),
        SamplingParams(temperature=1e-6),
        SamplingParams(top_k=1, temperature=2.0),
        SamplingParams(top_p=1e-9),
        SamplingParams(top_p=1e-9, top_k=5),
    ],
    ids=repr,
)
def test_fast_sampler_edge_cases_are_greedy(logits: np.ndarray, params: SamplingParams) -> None:
    """Greedy, tiny and denormal temperatures, top_k 1 and a tiny top_p all pick the most
    likely allowed token (xxunk, the favourite, stays excluded), with no NaN on the way."""
    sampler = Sampler(params, UNK, *logits.shape)
    with np.errstate(invalid="raise"):
        chosen = sampler(logits.copy(), make_rng(3))
    np.testing.assert_array_equal(chosen, _allowed(logits).argmax(axis=1))


def test_fast_sampler_huge_temperature_is_uniform_over_allowed() -> None:
    """1e300 (float32 cannot hold it: the plain path serves it): every allowed token alike."""
    logits = np.repeat(_lm_like_logits(50, seed=4)[None], 200, axis=0)
    sampler = Sampler(SamplingParams(temperature=1e300), UNK, *logits.shape)
    rng = make_rng(5)
    counts = np.bincount(
        np.concatenate([sampler(logits.copy(), rng) for _ in range(100)]), minlength=50
    )
    assert counts[UNK] == 0
    expected = np.full(50, 1 / 49)
    expected[UNK] = 0
    assert _chi_square_p(counts, expected) > 1e-3


FLOAT32_RELATIVE_ROUNDING = 1e-6  # a few float32 ulps (2**-23 ~ 1.2e-7 each)


@settings(max_examples=60, deadline=None)
@given(
    logits=arrays(np.float32, (3, 300), elements=st.floats(-20, 20, width=32)),
    temperature=st.sampled_from([0.0, 0.3, 1.0, 4.0]),
    top_k=st.one_of(st.none(), st.integers(1, 300)),
    top_p=st.one_of(st.none(), st.floats(0.01, 1.0)),
    seed=st.integers(0, 2**32),
)
def test_fast_sampler_draws_only_what_the_rules_allow(
    logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None, seed: int
) -> None:
    """On any logits: never xxunk, always inside the top-k (ties at the cut count as inside),
    greedy picks a best allowed token, any other draw has probability > 0 and (top_p alone)
    lies inside the nucleus to float32 rounding; the seed reproduces the draw."""
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    chosen = Sampler(params, UNK, *logits.shape)(logits.copy(), make_rng(seed))
    again = Sampler(params, UNK, *logits.shape)(logits.copy(), make_rng(seed))
    np.testing.assert_array_equal(chosen, again)
    allowed = _allowed(logits)
    plain = next_token_probabilities(logits, SamplingParams(temperature), UNK)
    for row, token in enumerate(chosen):
        assert token != UNK
        if top_k is not None:
            assert allowed[row, token] >= np.sort(allowed[row])[-min(top_k, 300)]
        if temperature == 0:
            assert allowed[row, token] == allowed[row].max()
            continue
        q = plain[row]
        assert q[token] > 0
        if top_p is not None and top_k is None:
            # The sampler ranks in float32: tokens whose probabilities agree to float32 rounding
            # are ties it may order either way (found by hypothesis: logits 0 and 3.3e-10 at
            # temperature 0.3 are one value in float32, two in float64), so only tokens clearly
            # more likely count as before this one.
            clearly_above = q > q[token] * (1 + FLOAT32_RELATIVE_ROUNDING)
            assert q[clearly_above].sum() < top_p + 1e-6


def build_softmax_draw(helper: Any, proto: Any) -> Any:
    """SOFTMAX_DRAW_ONNX as onnx.helper builds it (see the comment beside the bytes)."""
    node, double, int64 = helper.make_node, proto.DOUBLE, proto.INT64
    nodes = [
        node("Softmax", ["x"], ["probs"], axis=-1),
        node("Reshape", ["probs", "blocks_shape"], ["blocks"]),
        node("ReduceSum", ["blocks", "axis2"], ["block_sums32"], keepdims=0),
        node("Cast", ["block_sums32"], ["block_sums"], to=double),
        node("CumSum", ["block_sums", "axis1"], ["cdf"]),
        node("CumSum", ["block_sums", "axis1"], ["cdf_before"], exclusive=1),
        node("ReduceMax", ["cdf", "axis1"], ["total"], keepdims=1),
        node("Mul", ["u", "total"], ["target"]),
        node("LessOrEqual", ["cdf", "target"], ["below"]),
        node("Cast", ["below"], ["below64"], to=int64),
        node("ReduceSum", ["below64", "axis1"], ["block_count"], keepdims=1),
        node("Min", ["block_count", "last_block"], ["block"]),
        node("GatherElements", ["cdf_before", "block"], ["before"], axis=1),
        node("GatherElements", ["block_sums", "block"], ["width"], axis=1),
        node("Reshape", ["probs", "flat_shape"], ["flat"]),
        node("Add", ["row_base", "block"], ["flat_row"]),
        node("Gather", ["flat", "flat_row"], ["inside32"], axis=0),
        node("Cast", ["inside32"], ["inside"], to=double),
        node("CumSum", ["inside", "axis2"], ["inside_cdf"]),
        node("ReduceMax", ["inside_cdf", "axis2"], ["inside_total"], keepdims=0),
        node("Sub", ["target", "before"], ["offset"]),
        node("Div", ["offset", "width"], ["share"]),
        node("Mul", ["share", "inside_total"], ["into"]),
        node("Unsqueeze", ["into", "axis2"], ["into3"]),
        node("LessOrEqual", ["inside_cdf", "into3"], ["inside_below"]),
        node("Cast", ["inside_below"], ["inside_below64"], to=int64),
        node("ReduceSum", ["inside_below64", "axis2"], ["position"], keepdims=0),
        node("Mul", ["block", "block_size"], ["start"]),
        node("Add", ["start", "position"], ["token"]),
    ]
    info = helper.make_tensor_value_info
    inputs = [
        info("x", proto.FLOAT, ["rows", "vocab"]),
        info("u", double, ["rows", 1]),
        info("blocks_shape", int64, [3]),
        info("flat_shape", int64, [2]),
        info("row_base", int64, ["rows", 1]),
        info("last_block", int64, [1]),
        info("block_size", int64, [1]),
    ]
    outputs = [
        info("token", int64, ["rows", 1]),
        info("block_count", int64, ["rows", 1]),
        info("position", int64, ["rows", 1]),
        info("probs", proto.FLOAT, ["rows", "vocab"]),
    ]
    axes = [
        helper.make_tensor("axis1", int64, [1], [1]),
        helper.make_tensor("axis2", int64, [1], [2]),
    ]
    return helper.make_graph(nodes, "softmax_draw", inputs, outputs, axes)


def build_top_k(helper: Any, proto: Any) -> Any:
    info = helper.make_tensor_value_info
    return helper.make_graph(
        [helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=-1)],
        "top_k",
        [info("x", proto.FLOAT, ["rows", "vocab"]), info("k", proto.INT64, [1])],
        [info("values", proto.FLOAT, ["rows", "k"]), info("indices", proto.INT64, ["rows", "k"])],
    )


@pytest.mark.parametrize(
    ("build", "served"), [(build_softmax_draw, SOFTMAX_DRAW_ONNX), (build_top_k, TOP_K_ONNX)]
)
def test_the_sampling_graphs_are_what_onnx_helper_builds(build: Any, served: bytes) -> None:
    """The served bytes are the graphs they claim to be (rebuilt with the dev extra)."""
    onnx = pytest.importorskip("onnx")
    model = onnx.helper.make_model(
        build(onnx.helper, onnx.TensorProto),
        opset_imports=[onnx.helper.make_opsetid("", 18)],
        producer_name="fastai-onnx-serve",
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    assert model.SerializeToString() == served


def test_block_size_divides_the_vocabulary_or_pads() -> None:
    assert block_size(20_008) == 122  # 164 blocks: no padding for the shipped LM
    assert 20_000 % block_size(20_000) == 0
    assert block_size(2_003) == 128  # prime: padded
    assert block_size(50) == 50  # one block


class _TopOfTheRange:
    """A generator stand-in whose draws make u * total == total (what rounding u * total up
    gives): past every running sum, the edge where the sampler falls back to the last allowed
    token, as the plain path does."""

    def random(self, shape: tuple[int, int]) -> np.ndarray:
        return np.ones(shape)


@pytest.mark.parametrize("vocab", [997, 2_003, 20_008])
@pytest.mark.parametrize(
    "params", [SamplingParams(), SamplingParams(top_k=3), SamplingParams(top_p=0.5)], ids=repr
)
def test_fast_sampler_edge_of_the_cdf_matches_plain(vocab: int, params: SamplingParams) -> None:
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(4, vocab)).astype(np.float32)
    logits[:, -3:] = -np.inf  # the last tokens cannot be drawn: the fallback must skip them
    fixed: Any = _TopOfTheRange()
    fast = Sampler(params, UNK, *logits.shape)(logits.copy(), fixed)
    plain = choose_next(logits, params, UNK, fixed)
    assert np.array_equal(fast, plain)
    probs = next_token_probabilities(logits, params, UNK)
    assert (probs[np.arange(4), fast] > 0).all()
