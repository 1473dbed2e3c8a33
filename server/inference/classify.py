"""The one classify path, used by /classify, by v2 infer and by the demo page: token ids ->
probabilities through the micro-batcher (or straight runs), bounded by CLASSIFY_RUNS and
CLASSIFY_MAX_TOKENS, stopped at the request's deadline.

The resources only parse the request and write the answer (the dataplane pattern of KServe's
`protocol/dataplane.py`); everything between is here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from bundle import ClassifierModel
from server.inference.batching import ClassifyBatcher, RunBatch
from server.inference.guards import CLASSIFY_RUNS, MODEL, RUN_DEADLINES, TOKENIZE, RequestBudget
from server.inference.loading import ModelSet

# After each classification: (model, texts, probabilities), e.g. the shadow candidate's queue.
ClassifyListener = Callable[[ClassifierModel, list[str], np.ndarray], None]


def classifier_runner(model: ClassifierModel, max_tokens: int | None) -> RunBatch:
    """`run_batch` for one classifier: its onnxruntime runs hold at most `max_tokens` padded
    tokens each (a run's activation memory grows with them; bundle.classifier_rows.GraphRows; None: the
    bundle's default for its graph layout, `ClassifierModel.run_tokens`), made
    once one of the process's CLASSIFY_RUNS slots is free and stopped at the deadline
    (server/inference/guards.py). Answers are calibrated as the bundle says (short rows,
    bundle/calibration.py)."""

    budget = max_tokens or model.run_tokens

    def run(ids: Sequence[Sequence[int]], deadline: float, timeout_s: float) -> np.ndarray:
        with (
            CLASSIFY_RUNS.hold(deadline, timeout_s),
            RUN_DEADLINES.guard(deadline, timeout_s) as options,
        ):
            return model.predict_ids(ids, run_options=options, calibrated=True, max_tokens=budget)

    return run


@dataclass(frozen=True)
class Classification:
    """What one request's texts became: which model answered and one probability row per text."""

    model: ClassifierModel
    texts: list[str]
    probabilities: np.ndarray


@dataclass(frozen=True)
class BatchingConfig:
    """MICROBATCH, MICROBATCH_MAX_TEXTS, MICROBATCH_WAIT_MS and CLASSIFY_MAX_TOKENS."""

    microbatch: bool
    max_texts: int
    wait_s: float
    max_tokens: int | None


class ClassifyService:
    """One run path per classifier (a micro-batcher each when MICROBATCH is on)."""

    def __init__(self, models: ModelSet, batching: BatchingConfig) -> None:
        self.models = models
        self.listeners: list[ClassifyListener] = []
        self.batchers: dict[str, ClassifyBatcher] = {}
        self._runs: dict[str, RunBatch] = {}
        for name, model in models.classifiers.items():
            run = classifier_runner(model, batching.max_tokens)
            if batching.microbatch:
                self.batchers[name] = ClassifyBatcher(run, batching.max_texts, batching.wait_s)
            else:
                self._runs[name] = run

    def classify(
        self, texts: list[str], budget: RequestBudget, model_name: str | None = None
    ) -> Classification:
        """Probabilities for `texts` from the named (or default) classifier. The budget is told
        the time spent tokenizing and on the model (waiting for a batch and running it)."""
        model = self.models.classifier(model_name)
        started = time.perf_counter()
        ids = [model.tokenizer.encode(text) for text in texts]
        tokenized = time.perf_counter()
        budget.spend(TOKENIZE, tokenized - started)
        budget.check()
        name = model.manifest.name
        batcher = self.batchers.get(name)
        if batcher is not None:
            probabilities = batcher.predict(ids, budget)
        else:
            probabilities = self._runs[name](ids, budget.deadline, budget.timeout_s)
        budget.spend(MODEL, time.perf_counter() - tokenized)
        for listener in self.listeners:
            listener(model, texts, probabilities)
        return Classification(model, texts, probabilities)
