"""Next-token sampling with fastai `LMLearner.predict` semantics, in numpy, the state carried.

fastai re-feeds the whole sequence for each new token and samples from
`softmax(logits) ** (1 / temperature)` with xxunk zeroed (`no_unk`). Here the prompt is encoded
once, then each new token is one step with seq = 1 and the LSTM state carried; all samples are
rows of one batch. The distribution is the same: `softmax(logits / temperature)` restricted to
the allowed tokens, optionally cut to the top-k and/or the top-p nucleus. Randomness comes only
from the numpy Generator passed in, so a seed reproduces a result exactly, within one server
version: the server's `Sampler` draws from that distribution (float32, onnxruntime graphs), not
the same stream as the plain float64 functions here, which stay the reference the tests hold it
to and serve temperatures float32 cannot hold.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

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


# Two graphs, as ONNX bytes so serving needs no `onnx` package (opset 18; tests/
# test_server_sampling.py rebuilds both with onnx.helper and checks they are these bytes).
# SOFTMAX_DRAW: probs = Softmax(x) over the last axis; then one draw per row by inverse CDF in two
# levels: block_count = how many running sums of the blocks' masses (float64) are <= u * total,
# block = min(block_count, last_block); position = how many running sums of that block's
# probabilities are <= the target's share of the block, rescaled to the block's own sum;
# token = block * block_size + position. Inputs: x [rows, vocab], u [rows, 1] in [0, 1),
# blocks_shape [0, n_blocks, block_size], flat_shape [-1, block_size], row_base [rows, 1]
# (row * n_blocks), last_block [n_blocks - 1], block_size [block_size].
# Outputs: token, block_count, position [rows, 1], probs [rows, vocab].
SOFTMAX_DRAW_ONNX = bytes.fromhex(
    "080812116661737461692d6f6e6e782d73657276653acd0c0a290a0178120570726f62732207536f66746d6178"
    "2a140a046178697318ffffffffffffffffff01a001020a260a0570726f62730a0c626c6f636b735f7368617065"
    "1206626c6f636b732207526573686170650a390a06626c6f636b730a056178697332120c626c6f636b5f73756d"
    "733332220952656475636553756d2a0f0a086b65657064696d731800a001020a2b0a0c626c6f636b5f73756d73"
    "3332120a626c6f636b5f73756d732204436173742a090a02746f180ba001020a200a0a626c6f636b5f73756d73"
    "0a0561786973311203636466220643756d53756d0a390a0a626c6f636b5f73756d730a056178697331120a6364"
    "665f6265666f7265220643756d53756d2a100a096578636c75736976651801a001020a2f0a036364660a056178"
    "6973311205746f74616c22095265647563654d61782a0f0a086b65657064696d731801a001020a170a01750a05"
    "746f74616c120674617267657422034d756c0a210a036364660a06746172676574120562656c6f77220b4c6573"
    "734f72457175616c0a210a0562656c6f77120762656c6f7736342204436173742a090a02746f1807a001020a39"
    "0a0762656c6f7736340a056178697331120b626c6f636b5f636f756e74220952656475636553756d2a0f0a086b"
    "65657064696d731801a001020a250a0b626c6f636b5f636f756e740a0a6c6173745f626c6f636b1205626c6f63"
    "6b22034d696e0a380a0a6364665f6265666f72650a05626c6f636b12066265666f7265220e476174686572456c"
    "656d656e74732a0b0a04617869731801a001020a370a0a626c6f636b5f73756d730a05626c6f636b1205776964"
    "7468220e476174686572456c656d656e74732a0b0a04617869731801a001020a220a0570726f62730a0a666c61"
    "745f73686170651204666c61742207526573686170650a200a08726f775f626173650a05626c6f636b1208666c"
    "61745f726f7722034164640a2f0a04666c61740a08666c61745f726f771208696e736964653332220647617468"
    "65722a0b0a04617869731800a001020a230a08696e7369646533321206696e736964652204436173742a090a02"
    "746f180ba001020a230a06696e736964650a056178697332120a696e736964655f636466220643756d53756d0a"
    "3d0a0a696e736964655f6364660a056178697332120c696e736964655f746f74616c22095265647563654d6178"
    "2a0f0a086b65657064696d731800a001020a1d0a067461726765740a066265666f726512066f66667365742203"
    "5375620a1b0a066f66667365740a0577696474681205736861726522034469760a200a0573686172650a0c696e"
    "736964655f746f74616c1204696e746f22034d756c0a1f0a04696e746f0a0561786973321205696e746f332209"
    "556e73717565657a650a2e0a0a696e736964655f6364660a05696e746f33120c696e736964655f62656c6f7722"
    "0b4c6573734f72457175616c0a2f0a0c696e736964655f62656c6f77120e696e736964655f62656c6f77363422"
    "04436173742a090a02746f1807a001020a3d0a0e696e736964655f62656c6f7736340a0561786973321208706f"
    "736974696f6e220952656475636553756d2a0f0a086b65657064696d731800a001020a1f0a05626c6f636b0a0a"
    "626c6f636b5f73697a651205737461727422034d756c0a1d0a0573746172740a08706f736974696f6e1205746f"
    "6b656e2203416464120c736f66746d61785f647261772a0e080110073a0101420561786973312a0e080110073a"
    "0102420561786973325a1c0a017812170a15080112110a061204726f77730a071205766f6361625a170a017512"
    "120a10080b120c0a061204726f77730a0208015a1a0a0c626c6f636b735f7368617065120a0a08080712040a02"
    "08035a180a0a666c61745f7368617065120a0a08080712040a0208025a1e0a08726f775f6261736512120a1008"
    "07120c0a061204726f77730a0208015a180a0a6c6173745f626c6f636b120a0a08080712040a0208015a180a0a"
    "626c6f636b5f73697a65120a0a08080712040a020801621b0a05746f6b656e12120a100807120c0a061204726f"
    "77730a02080162210a0b626c6f636b5f636f756e7412120a100807120c0a061204726f77730a020801621e0a08"
    "706f736974696f6e12120a100807120c0a061204726f77730a02080162200a0570726f627312170a1508011211"
    "0a061204726f77730a071205766f63616242040a001012"
)
# values, indices = TopK(x, k) over the last axis: largest first, ties by lower index.
TOP_K_ONNX = bytes.fromhex(
    "080812116661737461692d6f6e6e782d73657276653aaa010a330a01780a016b120676616c7565731207696e64"
    "696365732204546f704b2a140a046178697318ffffffffffffffffff01a001021205746f705f6b5a1c0a017812"
    "170a15080112110a061204726f77730a071205766f6361625a0f0a016b120a0a08080712040a020801621d0a06"
    "76616c75657312130a110801120d0a061204726f77730a0312016b621e0a07696e646963657312130a11080712"
    "0d0a061204726f77730a0312016b42040a001012"
)


class GraphSession:
    """A one-thread onnxruntime session over graph bytes, made on first use in the process that
    samples (after gunicorn's fork, so the master holds none)."""

    def __init__(self, graph: bytes, outputs: list[str]) -> None:
        self._graph = graph
        self._outputs = outputs
        self._run: Callable[..., list[np.ndarray]] | None = None
        self._lock = threading.Lock()

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self._run is None:
            with self._lock:
                if self._run is None:
                    import onnxruntime as ort  # loaded already by the bundles

                    from bundle.onnx_run import unchecked_run

                    options = ort.SessionOptions()
                    options.intra_op_num_threads = 1
                    options.inter_op_num_threads = 1
                    session = ort.InferenceSession(
                        self._graph, options, providers=["CPUExecutionProvider"]
                    )
                    self._run = unchecked_run(session)  # once per step: bundle/onnx_run.py
        return self._run(self._outputs, feed, None)


SOFTMAX_DRAW = GraphSession(SOFTMAX_DRAW_ONNX, ["token", "block_count", "position", "probs"])
TOP_K = GraphSession(TOP_K_ONNX, ["values", "indices"])

# float32 holds (x - max) / temperature without losing the draw only inside these bounds; a
# temperature outside them (allowed, never useful) takes the plain float64 path.
FAST_TEMPERATURES = (1e-30, 1e30)
TOP_K_GRAPH_MAX = 256  # onnxruntime's TopK beats numpy's argpartition up to about this k


@functools.cache
def block_size(vocab: int) -> int:
    """Tokens per block of the two-level draw: a divisor of the vocabulary near its square
    root (so the graph reshapes without padding), else 128 with the logits padded. Cached: the
    search took 30 of the 35 us a Sampler (one per request) cost to build."""
    divisors = [d for d in range(32, min(vocab, 1024) + 1) if vocab % d == 0]
    if not divisors:
        return min(vocab, 128)
    return min(divisors, key=lambda d: abs(d * d - vocab))


class Sampler:
    """`choose_next`'s distribution for a fixed batch shape, in a fraction of its time.

    Why: the plain functions spent about 0.4 ms a step (5 x 20,008) in float64 passes, a full
    running sum and sorts; over a 5 x 40 /generate that was most of the time outside the LM.
    Here the logits are masked and scaled in place in float32 and one onnxruntime run
    (SOFTMAX_DRAW) does the softmax and the draw: a block of tokens by the running sum of the
    block masses (float64), then a token inside it by the running sum of its probabilities,
    rescaled to the block's mass, so each token is drawn with its softmax probability (to
    float32 rounding). One run instead of a dozen numpy calls matters most right after an LM
    step, when the caches are cold. top_k / top_p draw among the sorted top candidates (TopK).
    Greedy (temperature 0) is the argmax as before; a temperature float32 cannot hold falls
    back to the plain path. Not the plain functions' stream (docs/api.md scopes a seed to a
    server version); tests/test_server_sampling.py holds the draws to the plain distribution
    by chi-square, and checks every edge case.
    """

    def __init__(self, params: SamplingParams, unk_id: int, rows: int, vocab: int) -> None:
        self.params = params
        self.unk_id = unk_id
        self._masked = unk_id if params.no_unk and 0 <= unk_id < vocab else None
        self.shape = (rows, vocab)
        self.block = block_size(vocab)
        self.n_blocks = -(-vocab // self.block)
        padded = self.n_blocks * self.block
        # Padding columns stay -inf: probability 0, never drawn.
        self._padded = np.full((rows, padded), -np.inf, np.float32) if padded > vocab else None
        self._feed: dict[str, np.ndarray] = {
            "blocks_shape": np.array([0, self.n_blocks, self.block], dtype=np.int64),
            "flat_shape": np.array([-1, self.block], dtype=np.int64),
            "row_base": np.arange(rows, dtype=np.int64)[:, None] * self.n_blocks,
            "last_block": np.array([self.n_blocks - 1], dtype=np.int64),
            "block_size": np.array([self.block], dtype=np.int64),
        }
        top_k = params.top_k if params.top_k is not None and params.top_k < vocab else None
        self.top_k = top_k
        self.top_p = params.top_p if params.top_p is not None and params.top_p < 1 else None
        self._nucleus_k = 64  # candidates tried first for top_p alone; grows when too few
        low, high = FAST_TEMPERATURES
        self._plain = params.temperature != 0 and not low <= params.temperature <= high

    def __call__(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One token id per row. `logits` (float32, as the LM returns them) is used as scratch
        space: it is overwritten."""
        if logits.shape != self.shape:
            raise ValueError(f"logits {logits.shape}, sampler built for {self.shape}")
        params = self.params
        if self._plain:
            return choose_next(logits, params, self.unk_id, rng)
        x = logits if logits.dtype == np.float32 else logits.astype(np.float32)
        if self._masked is not None:
            x[:, self._masked] = -np.inf
        if params.temperature == 0 or self.top_k == 1:
            return x.argmax(axis=1).astype(np.int64)  # first of equal maxima, as the plain path
        if params.temperature != 1:
            # Shift the best allowed score to 0 before dividing: a tiny temperature then sends
            # the others to -inf (greedy in the limit) with no inf - inf.
            x -= x.max(axis=1, keepdims=True)
            with np.errstate(over="ignore"):
                x /= np.float32(params.temperature)
        if self.top_k is not None:
            values, indices = _top_candidates(x, self.top_k)
            weights = np.exp(values.astype(np.float64) - values[:, :1])
            probs = weights / weights.sum(axis=1, keepdims=True)
            if self.top_p is not None:
                probs = _nucleus_sorted(probs, self.top_p)
            return _draw_among(probs, indices, rng)
        if self._padded is not None:
            self._padded[:, : self.shape[1]] = x
            x = self._padded
        feed = self._feed
        feed["x"], feed["u"] = x, rng.random((self.shape[0], 1))
        token, block_count, position, probs = SOFTMAX_DRAW.run(feed)
        if self.top_p is not None:
            return self._nucleus_draw(probs, rng)
        chosen = token.ravel()
        # Rounding edges (u * total rounded up to the total, or a target past its block's
        # running sum): the last token with probability > 0, as the plain path falls back.
        # Two reductions, not a per-row test: they run with cold caches, right after an LM step.
        # As lists: a numpy reduction of five numbers costs more than the Python max.
        if max(block_count.ravel().tolist()) >= self.n_blocks or (
            max(position.ravel().tolist()) >= self.block
        ):
            for row in range(len(chosen)):
                if block_count[row, 0] >= self.n_blocks:
                    chosen[row] = _last_positive(probs[row])
                elif position[row, 0] >= self.block:
                    start = chosen[row] - position[row, 0]
                    chosen[row] = start + _last_positive(probs[row, start : start + self.block])
        return chosen

    def _nucleus_draw(self, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """top_p alone: the sorted top candidates, grown until every row's nucleus ends inside
        them (the next token's mass before it would reach top_p)."""
        top_p, vocab = self.top_p, self.shape[1]
        assert top_p is not None
        while True:
            k = min(self._nucleus_k, vocab)
            values, indices = _top_candidates(probs, k)
            top = values.astype(np.float64)
            if k == vocab or bool((top.sum(axis=1) >= top_p).all()):
                break
            self._nucleus_k = k * 4
        return _draw_among(_nucleus_sorted(top, top_p), indices, rng)


def _top_candidates(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k largest values and their indices, largest first, ties by lower index."""
    if k <= TOP_K_GRAPH_MAX:
        values, indices = TOP_K.run({"x": x, "k": np.array([k], dtype=np.int64)})
        return values, indices
    vocab = x.shape[1]
    indices = np.empty((x.shape[0], k), dtype=np.int64)
    for row, values in enumerate(x):
        part = np.argpartition(values, vocab - k)[vocab - k :]
        indices[row] = part[np.lexsort((part, -values[part]))]
    return np.take_along_axis(x, indices, axis=1), indices


def _nucleus_sorted(probs: np.ndarray, top_p: float) -> np.ndarray:
    """The nucleus of probabilities sorted largest first: keep while the mass before a token is
    under top_p (at least one token); the rest get 0."""
    mass_before = np.cumsum(probs, axis=1) - probs
    keep = mass_before < top_p
    keep[:, 0] = True
    return np.where(keep, probs, 0.0)


def _draw_among(weights: np.ndarray, indices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row among candidates with weights >= 0 (not normalised), by inverse CDF;
    never a zero-weight candidate."""
    cdf = np.cumsum(weights, axis=1)
    targets = rng.random((weights.shape[0], 1)) * cdf[:, -1:]
    chosen = (cdf <= targets).sum(axis=1)
    for row in np.flatnonzero(chosen >= weights.shape[1]):
        # u * total rounded up to total: the allowed token with the highest id (plain path's)
        chosen[row] = np.flatnonzero(weights[row] > 0)[np.argmax(indices[row][weights[row] > 0])]
    return indices[np.arange(weights.shape[0]), chosen]


def _last_positive(values: np.ndarray) -> int:
    return int(len(values) - 1 - np.argmax(values[::-1] > 0))


def _repeat_rows(state: list[np.ndarray], n: int) -> list[np.ndarray]:
    """Copy a batch-1 LSTM state to n rows; states are [1, batch, size] (bundle-format.md)."""
    return [np.repeat(layer, n, axis=1) for layer in state]


# A prompt runs in slices of at most this many tokens with the LSTM state carried (exact in fp32;
# int8 quantizes each run's inputs with its own scale), so one LM run's activations, which the
# session's arena keeps (bundle/runtime.py), stay bounded however long the prompt: one run over
# a 20,000-character prompt left the server holding +139 MiB with the arena, +41 without.
PROMPT_RUN_TOKENS = 256


def prompt_state(
    model: StepModel, prompt_ids: Sequence[int]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Next-token logits after the prompt, and the state: the prompt fed with batch 1 in slices
    of PROMPT_RUN_TOKENS."""
    if not prompt_ids:
        raise ValueError("the prompt must have at least one token (xxbos)")
    prompt = np.asarray([list(prompt_ids)], dtype=np.int64)
    state = model.initial_state(1)
    for start in range(0, prompt.shape[1], PROMPT_RUN_TOKENS):
        logits, state = model.step(prompt[:, start : start + PROMPT_RUN_TOKENS], state)
    return logits, state


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

    The prompt runs once with batch 1 (`prompt_state`; its state and logits are then copied to
    every sample), so a long prompt costs the same for 1 or 10 samples; no step is run after the
    last token.
    """
    logits, state = prompt_state(model, prompt_ids)
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
