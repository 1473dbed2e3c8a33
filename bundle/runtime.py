"""onnxruntime sessions for the two bundle tasks. Pure numpy in, numpy out.

ClassifierModel: token ids -> label probabilities (right-padded batches fed in time chunks with
the state carried, so a run's memory is bounded whatever the text length; exact, see the bundle
doc). A backward classifier (trained on reversed token ids) reverses each sequence itself, so callers
always pass ids in reading order.
LanguageModel: one step of the stateful LM; the sampling loop lives with its caller (which must
feed a backward LM, `backwards` true, its ids in reverse order).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .classifier_rows import GraphRows, RowsRunner
from .manifest import BundleError, Manifest, load_manifest
from .onnx_run import unchecked_run
from .tokenizer import Tokenizer

PRE_OPTIMIZED_FORMATS = ("onnx-optimized", "ort")  # optimized at export time: skip it at load
State = list[np.ndarray]  # [h0, c0, h1, c1, ...] in the order of manifest["states"]


def session_options(
    threads: int = 1, inter_threads: int = 1, spinning: bool = False
) -> ort.SessionOptions:
    """One vCPU by default: one intra-op thread, no spin-waiting (spinning burns the only core)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = inter_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Memory pattern off: with it, onnxruntime plans one block per input shape for the whole run
    # and the arena keeps every such block; without it, freed activations are reused across
    # nodes. Measured (8 x 510-token reviews in one classifier run): peak RSS 268 -> 219 MB,
    # same ms per run at batch 1 and 8 (docs/configuration.md, "Memory per bundle").
    opts.enable_mem_pattern = False
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    # CPU arena on: it keeps the largest run's activations for the session's life and reuses
    # them, so what it holds is bounded by how the server feeds the graphs: a classifier run
    # holds at most CLASSIFY_MAX_TOKENS padded tokens (256 for chunked graphs), an LM run one
    # step or one prompt slice (PROMPT_RUN_TOKENS, server/inference/sampling.py). With it off,
    # freed activations went back to malloc, whose heap holes (left by loading) the next runs
    # dirtied page by page. Measured, server on one pinned core, 8 concurrent long reviews then
    # 8 concurrent /generate 5 x 40, four runs each, pages counted once: peak after the reviews
    # 130.4-131.6 MiB with it, 135.5-151.7 without; after /generate 149.5-151.3 vs 149.1-160.1.
    # Same ms per run (one process, interleaved).
    opts.enable_cpu_mem_arena = True
    opts.log_severity_level = 3
    return opts


def _session(
    manifest: Manifest, options: ort.SessionOptions, model_path: Path | None = None
) -> ort.InferenceSession:
    path = model_path or manifest.model_path
    if model_path is None and manifest.raw["model"].get("format", "onnx") in PRE_OPTIMIZED_FORMATS:
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )  # done at export
    try:
        sess = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        raise BundleError(
            f"bundle {manifest.directory}: onnxruntime cannot load {path.name}: {e}"
        ) from None
    expected_in = {i["name"] for i in manifest.raw["model"].get("inputs", [])}
    actual_in = {i.name for i in sess.get_inputs()}
    if expected_in and expected_in != actual_in:
        raise BundleError(
            f"bundle {manifest.directory}: model inputs {sorted(actual_in)} != manifest {sorted(expected_in)}"
        )
    return sess


class _Model:
    def __init__(
        self, manifest: Manifest, tokenizer: Tokenizer, session: ort.InferenceSession
    ) -> None:
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.session = session
        arch = manifest.architecture
        self.pad_id: int = int(arch["pad_id"])
        self.bos_id: int = int(arch["bos_id"])
        self.unk_id: int = int(arch["unk_id"])
        self.vocab_size: int = int(arch["vocab_size"])
        self.backwards: bool = manifest.backwards


class ClassifierModel(_Model):
    """Label probabilities for token-id sequences of any length (no truncation: the graph pools
    over the last `max_len` tokens exactly as fastai does; callers bound the input size).
    `rows` runs the graph (GraphRows; an ensemble brings its own)."""

    def __init__(
        self,
        manifest: Manifest,
        tokenizer: Tokenizer,
        session: ort.InferenceSession,
        rows: RowsRunner | None = None,
    ) -> None:
        super().__init__(manifest, tokenizer, session)
        try:
            self.rows: RowsRunner = rows or GraphRows(session, self.pad_id, self.backwards)
        except ValueError as e:
            raise BundleError(f"bundle {manifest.directory}: {e}") from None
        # Parsed once here, not per call: the manifest's accessor validates the section anew.
        self.short_input = manifest.short_input

    @property
    def run_tokens(self) -> int:
        """Padded tokens per run by default (CLASSIFY_MAX_TOKENS unset): per graph layout."""
        return self.rows.run_tokens

    @property
    def labels(self) -> list[str]:
        return self.manifest.labels

    @property
    def multi_label(self) -> bool:
        """Probabilities are independent per-label sigmoids, not one softmax."""
        return self.manifest.multi_label

    @property
    def threshold(self) -> float | None:
        """Multi-label only: labels whose probability is above it are the answer."""
        return self.manifest.threshold

    def chosen_labels(self, probabilities: Sequence[float] | np.ndarray) -> list[str]:
        """The answer for one row, as fastai decodes it: every label above the threshold for a
        multi-label model (possibly none), else the single most probable label."""
        row = np.asarray(probabilities)
        if self.threshold is not None:
            return [label for label, p in zip(self.labels, row, strict=True) if p > self.threshold]
        return [self.labels[int(row.argmax())]]

    def predict_ids(
        self,
        batch: Sequence[Sequence[int]],
        run_options: ort.RunOptions | None = None,
        calibrated: bool = False,
        max_tokens: int | None = None,
    ) -> np.ndarray:
        """Ids in reading order. `run_options` lets a caller stop the runs from another thread
        (its `terminate` flag). `max_tokens` bounds the padded tokens of each onnxruntime run,
        hence its activation memory (GraphRows); None: one run. `calibrated`: with the
        manifest's short-input calibration applied to short rows, as the model is served
        (bundle/calibration.py); the default is the raw answer, which export measures and fits on."""
        if not batch:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        lengths = [len(ids) for ids in batch]
        if min(lengths) < 1:
            raise ValueError("every sequence needs at least one token")
        probabilities = self.rows(batch, run_options, max_tokens)
        calibration = self.short_input
        if calibrated and calibration is not None:
            return calibration.apply(probabilities, lengths)
        return probabilities

    def predict_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.predict_ids([self.tokenizer.encode(t) for t in texts])

    def warm_up(self) -> None:
        """First-run allocations, and proof that every id the tokenizer can produce has an
        embedding row (a tokenizer bigger than the model fails here, not on some request)."""
        self.predict_ids([self.tokenizer.encode("warm up"), [self.bos_id, self.vocab_size - 1]])


class LanguageModel(_Model):
    """The stateful LM graph: feed ids with the state, get next-token logits and the new state."""

    def __init__(
        self, manifest: Manifest, tokenizer: Tokenizer, session: ort.InferenceSession
    ) -> None:
        super().__init__(manifest, tokenizer, session)
        self._states = manifest.raw["states"]
        self._outputs = ["logits"] + [n for s in self._states for n in (s["h_out"], s["c_out"])]
        self._state_inputs = [n for s in self._states for n in (s["h"], s["c"])]
        self._run = unchecked_run(session)  # called twice a generation step: see unchecked_run

    def initial_state(self, batch: int) -> State:
        return [
            np.zeros((1, batch, int(s["size"])), dtype=np.float32)
            for s in self._states
            for _ in (0, 1)
        ]

    def step(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        feed = dict(zip(self._state_inputs, state, strict=True))
        feed["input_ids"] = np.ascontiguousarray(ids, dtype=np.int64)
        logits, *new_state = self._run(self._outputs, feed, None)
        return logits, new_state

    def warm_up(self) -> None:
        """As the classifier's: includes the highest token id, which must have an embedding row."""
        ids = np.array([[self.bos_id, self.vocab_size - 1]], dtype=np.int64)
        _logits, state = self.step(ids, self.initial_state(1))
        self.step(ids[:, :1], state)


Model = ClassifierModel | LanguageModel


def load_bundle(
    directory: str | Path, threads: int = 1, inter_threads: int = 1, model_path: Path | None = None
) -> Model:
    """Verify a bundle (manifest, hashes, vocab size vs model) and build its session.
    `model_path` loads another model file of the bundle (e.g. the fp32 copy) for comparisons."""
    manifest = load_manifest(directory)
    tokenizer = Tokenizer.from_file(manifest.tokenizer_path)
    if tokenizer.vocab_size != manifest.architecture["vocab_size"]:
        raise BundleError(
            f"bundle {manifest.directory}: tokenizer has {tokenizer.vocab_size} tokens, "
            f"model embedding has {manifest.architecture['vocab_size']} (mismatched tokenizer.json?)"
        )
    session = _session(manifest, session_options(threads, inter_threads), model_path)
    if manifest.task == "generate":  # the LM's logits are over the embedding's vocabulary
        logits_size = session.get_outputs()[0].shape[-1]
        if isinstance(logits_size, int) and logits_size != tokenizer.vocab_size:
            raise BundleError(
                f"bundle {manifest.directory}: model predicts over {logits_size} tokens, "
                f"tokenizer has {tokenizer.vocab_size} (mismatched tokenizer.json?)"
            )
    cls = ClassifierModel if manifest.task == "classify" else LanguageModel
    return cls(manifest, tokenizer, session)
