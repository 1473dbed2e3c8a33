"""Data drift: a rolling window of live classifier traffic against the reference statistics that
export measured on held-out data (manifest `reference_stats`, see export/evaluate.py).

Why PSI (population stability index): it compares two histograms over the same bins, needs no
raw reference data (the manifest holds only bin fractions), and has well-known reading rules:
below 0.1 no shift, 0.1-0.25 a moderate one, above 0.25 a major one. Four statistics are compared:
text length in tokens, out-of-vocabulary (xxunk) rate, predicted-label balance and confidence of
the predicted label. Inputs shift first (other language, other kind of text); outputs follow.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bundle import Manifest

log = logging.getLogger("server.drift")

# Empty bins are floored to this fraction, as is usual for PSI: a bin that is empty in the
# reference but filled live (or the reverse) then adds a large but finite term.
EPSILON = 1e-4
STATISTICS = ("length", "unk_rate", "predicted_label", "confidence")
# Reading rules published with PSI; the docs and the /models answer repeat them.
PSI_MODERATE, PSI_MAJOR = 0.1, 0.25


def psi(
    expected: Sequence[float] | np.ndarray,
    actual: Sequence[float] | np.ndarray,
    epsilon: float = EPSILON,
) -> float:
    """sum((actual - expected) * ln(actual / expected)) over bins, each fraction floored."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), epsilon)
    a = np.maximum(np.asarray(actual, dtype=np.float64), epsilon)
    if e.shape != a.shape or e.ndim != 1:
        raise ValueError(f"PSI needs two histograms over the same bins ({e.shape} vs {a.shape})")
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class BinnedReference:
    """A reference histogram as export writes it: lower bin edges, the last bin open-ended."""

    edges: tuple[float, ...]
    fractions: tuple[float, ...]

    @classmethod
    def parse(cls, raw: Any) -> BinnedReference:
        edges = tuple(float(e) for e in raw["edges"])
        fractions = tuple(float(f) for f in raw["fractions"])
        if not edges or len(edges) != len(fractions):
            raise ValueError("edges and fractions differ in length")
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError("edges must increase")
        if any(not math.isfinite(f) or f < 0 for f in fractions):
            raise ValueError("fractions must be finite and >= 0")
        return cls(edges, fractions)

    def bin_of(self, value: float) -> int:
        """The bin numpy.histogram would use at export (values below the first edge: bin 0)."""
        return max(bisect.bisect_right(self.edges, value) - 1, 0)


class RollingCounts:
    """Bin counts of the last `size` observations: a ring of bin indices, O(1) per update
    (plain lists: one update is a few list operations, not numpy scalar round trips)."""

    def __init__(self, n_bins: int, size: int) -> None:
        self._ring = [-1] * size
        self._counts = [0] * n_bins
        self._next = 0
        self.filled = 0

    def add(self, bin_index: int) -> None:
        old = self._ring[self._next]
        if old >= 0:
            self._counts[old] -= 1
        self._ring[self._next] = bin_index
        self._counts[bin_index] += 1
        self._next = (self._next + 1) % len(self._ring)
        if self.filled < len(self._ring):
            self.filled += 1

    def fractions(self) -> np.ndarray:
        return np.asarray(self._counts, dtype=np.int64) / max(self.filled, 1)


@dataclass(frozen=True)
class Observation:
    """What one classified text contributes to the window."""

    length: int
    unk_rate: float
    label_index: int
    confidence: float


class DriftMonitor:
    """PSI of each statistic over the last `window` texts one classifier saw (thread-safe)."""

    def __init__(
        self,
        model_id: str,
        reference: Mapping[str, Any],
        labels: Sequence[str],
        window: int,
        min_documents: int,
    ) -> None:
        self.model_id = model_id
        self.window = window
        self.min_documents = min_documents
        self.reference_documents = int(reference.get("documents", 0))
        self._binned: dict[str, BinnedReference] = {}
        self._expected: dict[str, np.ndarray] = {}
        for name in ("length", "unk_rate", "confidence"):
            if name in reference:
                try:
                    binned = BinnedReference.parse(reference[name])
                except (KeyError, TypeError, ValueError) as exc:
                    log.warning(
                        "reference_stats.%s of %s is unusable; not monitored",
                        name,
                        model_id,
                        extra={"error": str(exc)},
                    )
                    continue
                self._binned[name] = binned
                self._expected[name] = np.asarray(binned.fractions)
        balance = reference.get("predicted_label")
        if isinstance(balance, Mapping) and labels:
            self._expected["predicted_label"] = np.asarray(
                [float(balance.get(label, 0.0)) for label in labels]
            )
        self._windows = {
            name: RollingCounts(len(expected), window) for name, expected in self._expected.items()
        }
        self._lock = threading.Lock()

    @classmethod
    def for_manifest(
        cls, manifest: Manifest, window: int, min_documents: int
    ) -> DriftMonitor | None:
        """None when the bundle has no reference statistics (made before export recorded them)."""
        reference = manifest.raw.get("reference_stats")
        if not isinstance(reference, Mapping):
            return None
        return cls(manifest.model_id, reference, manifest.labels, window, min_documents)

    @property
    def statistics(self) -> tuple[str, ...]:
        return tuple(name for name in STATISTICS if name in self._windows)

    def observe(self, observations: Sequence[Observation]) -> None:
        self.observe_values(
            [item.length for item in observations],
            [item.unk_rate for item in observations],
            [item.label_index for item in observations],
            [item.confidence for item in observations],
        )

    def observe_values(
        self,
        lengths: Sequence[int],
        unk_rates: Sequence[float],
        label_indices: Sequence[int],
        confidences: Sequence[float],
    ) -> None:
        """`observe` for texts given as columns (what the instrumented classifier has at hand)."""
        columns = {
            "length": lengths,
            "unk_rate": unk_rates,
            "predicted_label": label_indices,
            "confidence": confidences,
        }
        with self._lock:
            for name, window in self._windows.items():
                binned = self._binned.get(name)
                n_bins = len(self._expected[name])
                for value in columns[name]:
                    index = binned.bin_of(value) if binned is not None else int(value)
                    if 0 <= index < n_bins:
                        window.add(index)

    def documents(self) -> int:
        with self._lock:
            return max((w.filled for w in self._windows.values()), default=0)

    def scores(self) -> dict[str, float | None]:
        """PSI per statistic; None while the window holds fewer than `min_documents` texts."""
        with self._lock:
            result: dict[str, float | None] = {}
            for name in self.statistics:
                window = self._windows[name]
                result[name] = (
                    psi(self._expected[name], window.fractions())
                    if window.filled >= self.min_documents
                    else None
                )
            return result

    def summary(self) -> dict[str, Any]:
        """The drift part of GET /models."""
        scores = self.scores()
        known = [s for s in scores.values() if s is not None]
        return {
            "window_documents": self.documents(),
            "window_size": self.window,
            "min_documents": self.min_documents,
            "reference_documents": self.reference_documents,
            "psi": {
                name: None if score is None else round(score, 6) for name, score in scores.items()
            },
            "max_psi": round(max(known), 6) if known else None,
            "thresholds": {"moderate": PSI_MODERATE, "major": PSI_MAJOR},
        }
