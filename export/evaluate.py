"""Measurements recorded in the manifest, taken with the project's own runtime (bundle/),
never with fastai: what is verified is what will be served."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bundle import ClassifierModel, LanguageModel

from .progress import progress

BATCH_SIZE = 32  # documents per classifier run in the evaluations
LENGTH_BINS = [0, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048]
UNK_RATE_BINS = [0.0, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16]
CONFIDENCE_BINS = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


def classify_ids(
    model: ClassifierModel,
    docs: Sequence[Sequence[int]],
    batch_size: int = BATCH_SIZE,
    on_batch: Callable[[], None] | None = None,
) -> np.ndarray:
    """Probabilities for many documents: length-sorted batches keep padding (wasted work) small,
    each fed in runs of the token budget a server uses by default (`run_tokens`), so the figures
    are the served model's. `on_batch` is called after each batch (progress)."""
    order = np.argsort([len(d) for d in docs])
    probs = np.zeros((len(docs), len(model.labels)), dtype=np.float32)
    for start in range(0, len(docs), batch_size):
        idx = order[start : start + batch_size]
        probs[idx] = model.predict_ids([docs[i] for i in idx], max_tokens=model.run_tokens)
        if on_batch is not None:
            on_batch()
    return probs


def lm_perplexity(
    model: LanguageModel,
    docs: Sequence[Sequence[int]],
    streams: int = 32,
    label: str = "perplexity",
) -> dict[str, float]:
    """Perplexity of the next-token prediction over documents packed into parallel streams,
    one token per step with the state carried (the same path generation uses)."""
    flat = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs])
    n = (len(flat) - 1) // streams
    if n < 1:
        raise ValueError("not enough tokens for the perplexity check")
    grid = flat[: n * streams + 1]
    inputs, targets = grid[:-1].reshape(streams, n), grid[1:].reshape(streams, n)
    state = model.initial_state(streams)
    nll, correct = 0.0, 0
    t0 = time.perf_counter()
    for t in progress(range(n), label, unit="steps"):
        logits, state = model.step(inputs[:, t : t + 1], state)
        logits = logits.astype(np.float64)
        m = logits.max(axis=1, keepdims=True)
        logz = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
        nll += float((logz - logits[np.arange(streams), targets[:, t]]).sum())
        correct += int((logits.argmax(1) == targets[:, t]).sum())
    tokens = n * streams
    return {
        "perplexity": math.exp(nll / tokens),
        "accuracy": correct / tokens,
        "tokens": tokens,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _histogram(values: Sequence[float], bins: Sequence[float]) -> dict[str, Any]:
    edges = [*list(bins), math.inf]
    counts, _ = np.histogram(np.asarray(values, dtype=np.float64), bins=edges)
    total = max(int(counts.sum()), 1)
    return {"edges": list(bins), "fractions": [round(c / total, 6) for c in counts.tolist()]}


def reference_stats(
    docs: Sequence[Sequence[int]],
    unk_id: int,
    probs: np.ndarray | None = None,
    label_names: Sequence[str] = (),
) -> dict[str, Any]:
    """Distributions of the reference (held-out) data that the server's drift monitor compares
    live traffic against. Each histogram's bins are lower edges; the last bin is open-ended."""
    lengths = [len(d) for d in docs]
    unk_rates = [sum(1 for t in d if t == unk_id) / max(len(d), 1) for d in docs]
    stats: dict[str, Any] = {
        "documents": len(docs),
        "length": _histogram(lengths, LENGTH_BINS),
        "unk_rate": _histogram(unk_rates, UNK_RATE_BINS),
        "mean_length": float(np.mean(lengths)),
        "mean_unk_rate": float(np.mean(unk_rates)),
    }
    if probs is not None and len(probs):
        predicted = probs.argmax(1)
        stats["predicted_label"] = {
            name: round(float((predicted == i).mean()), 6) for i, name in enumerate(label_names)
        }
        stats["confidence"] = _histogram(probs.max(1).tolist(), CONFIDENCE_BINS)
    return stats
