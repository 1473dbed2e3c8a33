"""How a classifier graph is fed: token-id rows in, one probability row per text out.

Two graph layouts (docs/bundle-format.md). A chunked graph takes texts in time chunks with its
LSTM and pooling state carried, so one onnxruntime run holds at most a token budget of padded
tokens (rows x chunk) however long the texts, and rows leave the batch as their texts end. A
whole-sequence graph (bundles exported before chunking) takes whole rows, grouped into runs
under the budget. Both are exact against one run in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import onnxruntime as ort

from .onnx_run import unchecked_run

CHUNK_INPUTS = ("input_ids", "lengths", "offset")  # a chunked classifier graph's own inputs
POOL_STATES = ("pool_max", "pool_sum", "pool_count", "last")  # its pooling state, carried


def chunked_classifier_io(n_layers: int) -> tuple[list[str], list[str]]:
    """Input and output names of a chunked classifier graph: each carried state X goes in as X
    and comes back as X_out (LSTM h/c per layer, then the pooling state)."""
    carried = [n for i in range(n_layers) for n in (f"h{i}", f"c{i}")] + list(POOL_STATES)
    return [*CHUNK_INPUTS, *carried], ["probabilities", *[f"{n}_out" for n in carried]]


def token_runs(lengths: Sequence[int] | np.ndarray, max_tokens: int) -> list[list[int]]:
    """Indices of rows grouped into runs of at most `max_tokens` padded tokens (rows x the
    longest row), shortest first so rows of a run have similar lengths; a longer row runs alone.
    For whole-sequence graphs, whose activations grow with rows x length."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    runs: list[list[int]] = []
    for i in order:
        if runs and (len(runs[-1]) + 1) * lengths[i] <= max_tokens:  # sorted: row i is longest
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


Row = Sequence[int] | np.ndarray  # one text's token ids

# Padded tokens per run a server uses when CLASSIFY_MAX_TOKENS is unset, per graph layout.
# Measured with the shipped-size classifier, server on one pinned core (docs/configuration.md,
# "Memory per bundle"): a chunked graph at 256 vs 512 tokens a run, peak PSS of the server
# under the memory load 140-147 vs 156-168 MiB (the worker's heap keeps what the runs fragment),
# at 384 as at 512; per review, median reviews alone and 8 long ones together the same, a long
# review alone +1-3 ms of ~72. A whole-sequence graph under 1024 instead of 2048 runs long rows
# alone: 70 vs 47 ms per review when 8 arrive together.
CHUNKED_RUN_TOKENS = 256
WHOLE_RUN_TOKENS = 2048


class RowsRunner(Protocol):
    """Runs a classifier over token-id rows in reading order: one probability row per text."""

    @property
    def run_tokens(self) -> int:
        """The padded tokens per run a server should allow by default."""
        ...

    def __call__(
        self,
        batch: Sequence[Sequence[int]],
        run_options: ort.RunOptions | None = None,
        max_tokens: int | None = None,
    ) -> np.ndarray: ...


class GraphRows:
    """Feeds one classifier graph token-id rows (reading order; reversed here for a backward
    model, after the tokenizer, as fastai's `backwards=True` dataloaders do).

    Two graph layouts (docs/bundle-format.md): a chunked graph takes the text in time chunks with
    its LSTM and pooling state carried, so a run holds at most `max_tokens` padded tokens
    (rows x chunk) however long the texts, and rows leave the batch as their texts end; a
    whole-sequence graph (bundles exported before chunking) takes whole rows, grouped into runs
    under `max_tokens` by `token_runs` (a longer row runs alone). `max_tokens` None: one run."""

    def __init__(self, session: ort.InferenceSession, pad_id: int, backwards: bool) -> None:
        self._run = unchecked_run(session)  # called once a run: see unchecked_run
        self.pad_id = pad_id
        self.backwards = backwards
        inputs = {i.name: i.shape for i in session.get_inputs()}
        self.chunked = "offset" in inputs
        self._outputs = ["probabilities"]
        self._state_names: list[str] = []  # carried state, in the graph's order (chunked only)
        self._state_widths: list[int] = []
        self._n_lstm = 0  # the first _n_lstm carried states are LSTM h/c [1, batch, width]
        if self.chunked:
            n_layers = sum(1 for name in inputs if name[0] == "h" and name[1:].isdigit())
            names_in, self._outputs = chunked_classifier_io(n_layers)
            if set(names_in) != set(inputs):
                raise ValueError(f"classifier graph inputs {sorted(inputs)} != {sorted(names_in)}")
            self._state_names = names_in[len(CHUNK_INPUTS) :]
            self._state_widths = [int(inputs[name][-1]) for name in self._state_names]
            self._n_lstm = 2 * n_layers

    @property
    def run_tokens(self) -> int:
        return CHUNKED_RUN_TOKENS if self.chunked else WHOLE_RUN_TOKENS

    def __call__(
        self,
        batch: Sequence[Sequence[int]],
        run_options: ort.RunOptions | None = None,
        max_tokens: int | None = None,
    ) -> np.ndarray:
        rows: list[Row] = [np.asarray(seq)[::-1] if self.backwards else seq for seq in batch]
        if self.chunked:
            return self._chunks(rows, run_options, max_tokens)
        lengths = [len(seq) for seq in rows]
        runs = token_runs(lengths, max_tokens) if max_tokens else [list(range(len(rows)))]
        out: np.ndarray | None = None
        for run in runs:
            names, feed = self.one_run_feed([rows[i] for i in run])
            probs = self._run(names, feed, run_options)[0]
            if out is None:
                out = np.empty((len(rows), probs.shape[1]), dtype=probs.dtype)
            out[run] = probs
        assert out is not None
        return out

    def _padded(self, rows: Sequence[Row], start: int, end: int) -> np.ndarray:
        """Positions [start, end) of each row, right-padded."""
        ids = np.full((len(rows), end - start), self.pad_id, dtype=np.int64)
        for r, seq in enumerate(rows):
            part = seq[start:end]
            ids[r, : len(part)] = part
        return ids

    def _initial_state(self, rows: int) -> list[np.ndarray]:
        """Zero LSTM state; pooling: running max -inf, sum, count and last output zero."""
        return [
            np.full((rows, width), -np.inf, np.float32)
            if name == "pool_max"
            else np.zeros((1, rows, width) if i < self._n_lstm else (rows, width), np.float32)
            for i, (name, width) in enumerate(
                zip(self._state_names, self._state_widths, strict=True)
            )
        ]

    def one_run_feed(self, rows: Sequence[Row]) -> tuple[list[str], dict[str, np.ndarray]]:
        """(output names, feed) of the single run that answers `rows` (model order), for timing
        the bare `session.run` (benchmarks/inprocess.py)."""
        lengths = np.array([len(seq) for seq in rows], dtype=np.int64)
        feed = {"input_ids": self._padded(rows, 0, int(lengths.max())), "lengths": lengths}
        if self.chunked:
            feed.update(zip(self._state_names, self._initial_state(len(rows)), strict=True))
            feed["offset"] = np.array([0], dtype=np.int64)
        return self._outputs, feed

    def _chunks(
        self,
        rows: Sequence[Row],
        run_options: ort.RunOptions | None,
        max_tokens: int | None,
    ) -> np.ndarray:
        """Longest rows first, so the rows still running are always a prefix: a row whose text
        has ended takes its answer from that chunk's output and leaves the batch."""
        order = np.argsort([-len(seq) for seq in rows], kind="stable")
        ordered = [rows[i] for i in order]
        lengths = np.array([len(seq) for seq in ordered], dtype=np.int64)
        n = len(ordered)
        state = self._initial_state(n)
        out: np.ndarray | None = None
        start, active = 0, n
        while active:
            width = max(1, max_tokens // active) if max_tokens else int(lengths[0])
            end = min(start + width, int(lengths[0]))
            feed: dict[str, np.ndarray] = dict(zip(self._state_names, state, strict=True))
            feed.update(
                input_ids=self._padded(ordered[:active], start, end),
                lengths=lengths[:active],
                offset=np.array([start], dtype=np.int64),
            )
            probs, *state = self._run(self._outputs, feed, run_options)
            if out is None:
                out = np.empty((n, probs.shape[1]), dtype=probs.dtype)
            still = int(np.count_nonzero(lengths > end))
            if still < active:  # these rows' texts end in this chunk: their answer is final
                out[order[still:active]] = probs[still:active]
                state = [
                    s[:, :still] if i < self._n_lstm else s[:still] for i, s in enumerate(state)
                ]
            start, active = end, still
        assert out is not None
        return out
