"""The loaded models, instrumented: every onnxruntime call reports its time and batch size, and
every classified text its length, xxunk rate, label and confidence (metrics + drift window).

Why wrap the models rather than the endpoints: whatever calls a model (/classify, the v2 infer
endpoint, a micro-batcher that coalesces requests) is measured the same way, at the one place
where the tokens and the probabilities exist together. The wrappers are subclasses sharing the
original's manifest, tokenizer and onnxruntime session, so nothing is loaded twice.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from bundle import ClassifierModel, LanguageModel
from bundle.runtime import State
from server.observability.drift import DriftMonitor
from server.observability.metrics import ServerMetrics

_local = threading.local()


@contextmanager
def unrecorded() -> Iterator[None]:
    """Model calls made by this thread inside the block are not traffic (warm-up)."""
    previous = getattr(_local, "muted", False)
    _local.muted = True
    try:
        yield
    finally:
        _local.muted = previous


def _recording() -> bool:
    return not getattr(_local, "muted", False)


def unk_count(ids: Sequence[int], unk_id: int) -> int:
    if isinstance(ids, list):
        return ids.count(unk_id)  # C speed for the tokenizer's lists
    return int(np.count_nonzero(np.asarray(ids) == unk_id))


class ObservedClassifier(ClassifierModel):
    """A ClassifierModel whose calls feed the metrics and the drift window."""

    def __init__(
        self, model: ClassifierModel, metrics: ServerMetrics, drift: DriftMonitor | None
    ) -> None:
        super().__init__(model.manifest, model.tokenizer, model.session, model.rows)
        self._metrics = metrics
        self.drift = drift
        self._model_id = model_id = model.manifest.model_id
        # Each series bound once: a request then touches no label checks (see `_record`).
        self._inference_seconds = metrics.inference_seconds.labels(model=model_id)
        self._batch_size = metrics.batch_size.labels(model=model_id)
        self._input_tokens = metrics.input_tokens.labels(model=model_id)
        self._unk_rate = metrics.unk_rate.labels(model=model_id)
        self._confidence = metrics.confidence.labels(model=model_id)
        self._predictions = [
            metrics.predictions.labels(model=model_id, label=label) for label in self.labels
        ]

    def predict_ids(self, batch: Sequence[Sequence[int]], *args: Any, **kwargs: Any) -> np.ndarray:
        started = time.perf_counter()
        probabilities = super().predict_ids(batch, *args, **kwargs)
        seconds = time.perf_counter() - started
        if len(batch) and _recording():
            self._record(batch, probabilities, seconds)
        return probabilities

    def _record(
        self, batch: Sequence[Sequence[int]], probabilities: np.ndarray, seconds: float
    ) -> None:
        """Metrics and the drift window for one call: its time and size, and per text its
        length, xxunk rate, predicted label(s) and confidence. Runs on the request path after
        every run, so it touches pre-bound series and plain lists (23 -> 11 us a call warm)."""
        lengths = [len(ids) for ids in batch]
        unk_id = self.unk_id
        unk_rates = [
            unk_count(ids, unk_id) / max(n, 1) for ids, n in zip(batch, lengths, strict=True)
        ]
        predicted: list[int] = probabilities.argmax(axis=1).tolist()
        confidences: list[float] = probabilities.max(axis=1).tolist()
        self._inference_seconds.observe(seconds)
        self._batch_size.observe(len(batch))
        self._input_tokens.observe_many(lengths)
        self._unk_rate.observe_many(unk_rates)
        self._confidence.observe_many(confidences)
        if self.multi_label:  # every label above the threshold is a prediction
            chosen = Counter(label for row in probabilities for label in self.chosen_labels(row))
            for index, label in enumerate(self.labels):
                if chosen[label]:
                    self._predictions[index].inc(float(chosen[label]))
        else:
            for index in predicted:
                self._predictions[index].inc()
        if self.drift is not None:
            self.drift.observe_values(lengths, unk_rates, predicted, confidences)

    def warm_up(self) -> None:
        with unrecorded():
            super().warm_up()


class ObservedLanguageModel(LanguageModel):
    """A LanguageModel whose steps report onnxruntime time and batch size (samples per step)."""

    def __init__(self, model: LanguageModel, metrics: ServerMetrics) -> None:
        super().__init__(model.manifest, model.tokenizer, model.session)
        model_id = model.manifest.model_id
        # Bound once: a generation observes both every step, right after the LM run.
        self._inference_seconds = metrics.inference_seconds.labels(model=model_id)
        self._batch_size = metrics.batch_size.labels(model=model_id)

    def step(
        self, ids: np.ndarray, state: State, *args: Any, **kwargs: Any
    ) -> tuple[np.ndarray, State]:
        started = time.perf_counter()
        result = super().step(ids, state, *args, **kwargs)
        if _recording():
            self._inference_seconds.observe(time.perf_counter() - started)
            self._batch_size.observe(len(ids))
        return result

    def warm_up(self) -> None:
        with unrecorded():
            super().warm_up()
