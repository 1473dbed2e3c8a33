"""Next-token sampling with fastai `LMLearner.predict` semantics, in numpy, the state carried.

fastai re-feeds the whole sequence for each new token and samples from
`softmax(logits) ** (1 / temperature)` with xxunk zeroed (`no_unk`). Here the prompt is encoded
once, then each new token is one step with seq = 1 and the LSTM state carried; all samples are
rows of one batch. The distribution is the same: `softmax(logits / temperature)` restricted to
the allowed tokens, optionally cut to the top-k and/or the top-p nucleus. Randomness comes only
from the numpy Generator passed in, so a seed reproduces a result exactly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class StepModel(Protocol):
    """What generation needs from `bundle.LanguageModel`."""

    def initial_state(self, batch: int) -> list[np.ndarray]: ...

    def step(
        self, ids: np.ndarray, state: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]: ...


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. temperature 0 means greedy (argmax)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    no_unk: bool = True

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise ValueError("temperature must be a finite number >= 0")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")


def allowed_logits(logits: np.ndarray, params: SamplingParams, unk_id: int) -> np.ndarray:
    """float64 copy of the logits, temperature-scaled, with excluded tokens set to -inf."""
    scores = np.array(logits, dtype=np.float64, copy=True)
    if params.no_unk and 0 <= unk_id < scores.shape[1]:
        scores[:, unk_id] = -np.inf
    if params.temperature > 0:
        # Shift the best score to 0 first: a tiny temperature then sends the others to -inf
        # (greedy in the limit) instead of overflowing to inf - inf = NaN. Softmax is unchanged.
        scores -= scores.max(axis=1, keepdims=True)
        with np.errstate(over="ignore"):
            scores /= params.temperature
    if params.top_k is not None and params.top_k < scores.shape[1]:
        drop = np.argpartition(scores, -params.top_k, axis=1)[:, : -params.top_k]
        np.put_along_axis(scores, drop, -np.inf, axis=1)
    return scores


def _softmax(scores: np.ndarray) -> np.ndarray:
    peak = scores.max(axis=1, keepdims=True)
    weights = np.exp(scores - peak)  # exp(-inf) == 0: excluded tokens get probability 0
    return weights / weights.sum(axis=1, keepdims=True)


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose mass reaches top_p (at least one)."""
    order = np.argsort(-probs, axis=1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=1)
    mass_before = np.cumsum(sorted_probs, axis=1) - sorted_probs
    keep_sorted = mass_before < top_p
    keep_sorted[:, 0] = True
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=1)
    kept = np.where(keep, probs, 0.0)
    return kept / kept.sum(axis=1, keepdims=True)


def next_token_probabilities(logits: np.ndarray, params: SamplingParams, unk_id: int) -> np.ndarray:
    """The (batch, vocab) distribution sampling draws from (one-hot argmax for temperature 0)."""
    scores = allowed_logits(logits, params, unk_id)
    if params.temperature == 0:
        probs = np.zeros_like(scores)
        np.put_along_axis(probs, scores.argmax(axis=1)[:, None], 1.0, axis=1)
        return probs
    probs = _softmax(scores)
    if params.top_p is not None and params.top_p < 1:
        probs = _nucleus(probs, params.top_p)
    return probs


def sample_from(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row by inverse CDF; never returns a zero-probability token."""
    cdf = np.cumsum(probs, axis=1)
    targets = rng.random((probs.shape[0], 1)) * cdf[:, -1:]
    chosen = (cdf <= targets).sum(axis=1)
    # Guard the float edge case u*total rounding up to total: fall back to the last allowed token.
    last_allowed = probs.shape[1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=1)
    return np.minimum(chosen, last_allowed).astype(np.int64)


def choose_next(
    logits: np.ndarray, params: SamplingParams, unk_id: int, rng: np.random.Generator
) -> np.ndarray:
    """Next token id for each row: argmax when temperature is 0, else a draw."""
    if params.temperature == 0:
        return allowed_logits(logits, params, unk_id).argmax(axis=1).astype(np.int64)
    return sample_from(next_token_probabilities(logits, params, unk_id), rng)


# y = CumSum(x, axis=0) over a float64 [vocab, rows] matrix, opset 14, as ONNX bytes (132) so
# serving needs no `onnx` package; tests/test_server_sampling.py rebuilds it with onnx.helper.
CUMSUM_AXIS0_ONNX = bytes.fromhex(
    "080812116661737461692d6f6e6e782d73657276653a670a140a01780a0461786973120179220643756d53756d"
    "120663756d73756d2a0b10073a01004204617869735a1c0a017812170a15080b12110a071205766f6361620a06"
    "1204726f7773621c0a017912170a15080b12110a071205766f6361620a061204726f777342040a00100e"
)


class ColumnCumsum:
    """Running sums down each column, in onnxruntime: the same sequential float64 additions as
    `np.cumsum` along a row (bit-identical), but the rows (samples) advance side by side, so
    the chain of dependent additions is vocab long, not rows x vocab. Per step of 5 x 20,008 it
    measured 0.076 ms against numpy's 0.33 ms (one core). The session is made on first use, in
    the process that samples (after gunicorn's fork)."""

    def __init__(self) -> None:
        self._session: Any = None
        self._lock = threading.Lock()

    def __call__(self, columns: np.ndarray) -> np.ndarray:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    import onnxruntime as ort  # loaded already by the bundles

                    options = ort.SessionOptions()
                    options.intra_op_num_threads = 1
                    options.inter_op_num_threads = 1
                    self._session = ort.InferenceSession(
                        CUMSUM_AXIS0_ONNX, options, providers=["CPUExecutionProvider"]
                    )
        return self._session.run(None, {"x": columns})[0]


COLUMN_CUMSUM = ColumnCumsum()


class Sampler:
    """`choose_next` for a fixed batch shape, drawing the very same tokens from the same rng.

    Why: per step the plain functions allocate several (batch, vocab) float64 arrays (fresh
    pages every time), sort the whole vocabulary for top_p and compare every cdf entry; over a
    5 x 40 /generate that was most of the time outside the LM. Here the same float64 operations
    run in the same order into buffers reused across steps (so every probability and cdf value
    is bit-identical), the cdf's running sums advance all samples at once (`ColumnCumsum`), the
    nucleus sorts only the most likely candidates, and the draw is a binary search of the cdf.
    tests/test_server_sampling.py compares both on fixed and on generated logits.
    """

    def __init__(self, params: SamplingParams, unk_id: int, rows: int, vocab: int) -> None:
        self.params = params
        self.unk_id = unk_id
        self.shape = (rows, vocab)
        self._scores = np.empty(self.shape, dtype=np.float64)
        self._work = np.empty(self.shape, dtype=np.float64)
        self._columns = np.empty((vocab, rows), dtype=np.float64)  # probabilities, transposed

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """`allowed_logits`, into the reused buffer."""
        params, scores = self.params, self._scores
        np.copyto(scores, logits)
        if params.no_unk and 0 <= self.unk_id < scores.shape[1]:
            scores[:, self.unk_id] = -np.inf
        if params.temperature > 0:
            scores -= scores.max(axis=1, keepdims=True)
            if params.temperature != 1:  # x / 1 == x exactly: skip the pass
                with np.errstate(over="ignore"):
                    scores /= params.temperature
        if params.top_k is not None and params.top_k < scores.shape[1]:
            drop = np.argpartition(scores, -params.top_k, axis=1)[:, : -params.top_k]
            np.put_along_axis(scores, drop, -np.inf, axis=1)
        return scores

    def _weights(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """exp(scores - best) per row, and each row's sum: softmax before the division."""
        scores, weights = self.scores(logits), self._work
        peak = scores.max(axis=1, keepdims=True)
        if peak.any():  # the best score is already 0 after the shift: x - 0 == x, skip it
            np.subtract(scores, peak, out=weights)
            np.exp(weights, out=weights)
        else:
            np.exp(scores, out=weights)
        return weights, weights.sum(axis=1, keepdims=True)

    def _nucleus_on(self) -> bool:
        return self.params.top_p is not None and self.params.top_p < 1

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """`next_token_probabilities` for temperature > 0, into the reused buffer."""
        weights, totals = self._weights(logits)
        weights /= totals
        if self._nucleus_on():
            _nucleus_partial(weights, self.params.top_p)  # type: ignore[arg-type]
        return weights

    def __call__(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if logits.shape != self.shape:
            raise ValueError(f"logits {logits.shape}, sampler built for {self.shape}")
        if self.params.temperature == 0:
            return self.scores(logits).argmax(axis=1).astype(np.int64)
        columns = self._columns  # the probabilities, transposed: [vocab, rows]
        if self._nucleus_on():
            np.copyto(columns.T, self.probabilities(logits))
        else:  # the division writes the transposed copy directly (one pass fewer)
            weights, totals = self._weights(logits)
            np.divide(weights, totals, out=columns.T)
        cdf = COLUMN_CUMSUM(columns)  # column r is np.cumsum(probabilities[r])
        rows, vocab = self.shape
        targets = rng.random((rows, 1)) * cdf[-1, :, None]
        chosen = np.empty(rows, dtype=np.int64)
        for row in range(rows):
            # cdf is non-decreasing (probabilities >= 0), so the count of entries <= target
            # is a binary search; the chosen token then has probability > 0 unless the count
            # ran past the end (u * total rounded up to total): then the last allowed token.
            index = int(np.searchsorted(cdf[:, row], targets[row, 0], side="right"))
            if index >= vocab:
                index = vocab - 1 - int(np.argmax(columns[::-1, row] > 0))
            chosen[row] = index
        return chosen


def _nucleus_partial(probs: np.ndarray, top_p: float) -> None:
    """`_nucleus` in place, sorting only the most likely tokens (bit-identical results).

    The kept set is a prefix of the tokens in (probability descending, index ascending) order,
    and the cumulative mass of that prefix is the same sequential sum `_nucleus` computes; the
    candidates are grown until the prefix ends inside them."""
    vocab = probs.shape[1]
    for row in probs:
        take = min(vocab, 64)
        while True:
            if take < vocab:
                part = np.argpartition(row, vocab - take)[vocab - take :]
                # ties at the cut: every token as likely as the weakest candidate must compete
                cut = row[part].min()
                part = np.flatnonzero(row >= cut)
            else:
                part = np.arange(vocab)
            order = part[np.lexsort((part, -row[part]))]
            sorted_probs = row[order]
            mass = np.cumsum(sorted_probs)
            # Past the candidates the mass before a token is at least this prefix's mass less
            # a rounding step; with a margin over top_p no later token could be kept.
            if len(part) >= vocab or mass[-1] >= top_p + 1e-9:
                break
            take = min(vocab, take * 4)
        keep = mass - sorted_probs < top_p
        keep[0] = True
        kept = np.zeros_like(row)
        kept[order[keep]] = row[order[keep]]
        np.divide(kept, kept.sum(), out=row)


def _repeat_rows(state: list[np.ndarray], n: int) -> list[np.ndarray]:
    """Copy a batch-1 LSTM state to n rows; states are [1, batch, size] (bundle-format.md)."""
    return [np.repeat(layer, n, axis=1) for layer in state]


def generate_ids(
    model: StepModel,
    prompt_ids: Sequence[int],
    n_words: int,
    n_samples: int,
    params: SamplingParams,
    unk_id: int,
    rng: np.random.Generator,
) -> Iterator[np.ndarray]:
    """Yield the (n_samples,) new token ids of each step, n_words times.

    The prompt runs once with batch 1 (its state and logits are then copied to every sample),
    so a long prompt costs the same for 1 or 10 samples; no step is run after the last token.
    """
    if not prompt_ids:
        raise ValueError("the prompt must have at least one token (xxbos)")
    prompt = np.asarray([list(prompt_ids)], dtype=np.int64)
    logits, state = model.step(prompt, model.initial_state(1))
    logits = np.repeat(logits, n_samples, axis=0)
    state = _repeat_rows(state, n_samples)
    sampler = Sampler(params, unk_id, *logits.shape)
    for index in range(n_words):
        next_ids = sampler(logits, rng)
        yield next_ids
        if index + 1 < n_words:
            logits, state = model.step(next_ids[:, None], state)


def make_rng(seed: int | None) -> np.random.Generator:
    """A seeded Generator reproduces a request; None draws fresh OS entropy."""
    return np.random.default_rng(seed)
