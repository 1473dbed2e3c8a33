"""Drift: PSI arithmetic, binning identical to export's, and a real server whose score stays low
on traffic like the reference data and rises on shifted traffic (another language, other text)."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_harness import InProcessServer, parse, value

from server.observability.drift import (
    BinnedReference,
    DriftMonitor,
    Observation,
    RollingCounts,
    psi,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import review

LENGTH_EDGES = [0, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048]  # export's bins


# ------------------------------------------------------------------------ arithmetic
def test_psi_matches_the_formula() -> None:
    expected, actual = [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]
    by_hand = sum((a - e) * math.log(a / e) for e, a in zip(expected, actual, strict=True))
    assert psi(expected, actual) == pytest.approx(by_hand)
    assert psi(expected, expected) == 0
    assert psi([1.0, 0.0], [0.0, 1.0]) == pytest.approx(2 * (1 - 1e-4) * math.log(1e4))
    with pytest.raises(ValueError):
        psi([0.5, 0.5], [1.0])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=5000, allow_nan=False), min_size=1, max_size=50))
def test_binning_is_the_same_as_exports_numpy_histogram(values: list[float]) -> None:
    """export/evaluate.py bins with numpy.histogram over lower edges + inf; so must we."""
    reference = BinnedReference.parse({"edges": LENGTH_EDGES, "fractions": [0] * 12})
    counts, _ = np.histogram(values, bins=[*LENGTH_EDGES, math.inf])
    ours = np.bincount([reference.bin_of(v) for v in values], minlength=12)
    assert ours.tolist() == counts.tolist()


def test_rolling_window_keeps_only_the_last_observations() -> None:
    window = RollingCounts(n_bins=3, size=4)
    for index in (0, 0, 0, 0, 2, 2):
        window.add(index)
    assert window.filled == 4
    assert window.fractions().tolist() == [0.5, 0.0, 0.5]


def synthetic_reference() -> dict[str, Any]:
    return {
        "documents": 1000,
        "length": {"edges": LENGTH_EDGES, "fractions": [0.0, 0.3, 0.6, 0.1] + [0.0] * 8},
        "unk_rate": {
            "edges": [0.0, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16],
            "fractions": [0.9, 0.1, 0, 0, 0, 0, 0],
        },
        "predicted_label": {"neg": 0.5, "pos": 0.5},
        "confidence": {
            "edges": [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99],
            "fractions": [0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.1],
        },
    }


def test_columns_and_observations_fill_the_same_window() -> None:
    """`observe_values` (the instrumented classifier's columns) is `observe` of Observations, and
    the window holds the bins numpy.histogram gives the last WINDOW texts."""
    rng = random.Random(7)
    items = [
        Observation(
            rng.randrange(1, 3000), rng.random() * 0.2, rng.randrange(2), 0.5 + rng.random() / 2
        )
        for _ in range(130)
    ]
    one = DriftMonitor("m@1", synthetic_reference(), ["neg", "pos"], window=50, min_documents=1)
    other = DriftMonitor("m@1", synthetic_reference(), ["neg", "pos"], window=50, min_documents=1)
    for start in range(0, len(items), 7):
        chunk = items[start : start + 7]
        one.observe(chunk)
        other.observe_values(
            [i.length for i in chunk],
            [i.unk_rate for i in chunk],
            [i.label_index for i in chunk],
            [i.confidence for i in chunk],
        )
    assert one.scores() == other.scores()
    last = [i.length for i in items[-50:]]
    counts, _ = np.histogram(last, bins=[*LENGTH_EDGES, math.inf])
    fractions = other._windows["length"].fractions()
    assert fractions.tolist() == (counts / 50).tolist()


def test_monitor_scores_only_once_the_window_is_full_enough() -> None:
    monitor = DriftMonitor(
        "m@1", synthetic_reference(), ["neg", "pos"], window=100, min_documents=50
    )
    rng = random.Random(0)

    def like_reference() -> Observation:
        return Observation(
            rng.choice([40] * 3 + [100] * 6 + [150]),
            rng.choice([0.0] * 9 + [0.007]),
            rng.randrange(2),
            rng.choice([0.55, 0.65, 0.75, 0.85, 0.85, 0.92, 0.92, 0.97, 0.97, 0.995]),
        )

    monitor.observe([like_reference() for _ in range(49)])
    assert monitor.scores() == dict.fromkeys(
        ("length", "unk_rate", "predicted_label", "confidence")
    )
    monitor.observe([like_reference() for _ in range(100)])
    calm = monitor.scores()
    assert max(calm.values()) < 0.25, calm  # type: ignore[type-var]
    monitor.observe([Observation(900, 0.3, 0, 0.51) for _ in range(100)])  # the window rolls
    shifted = monitor.scores()
    assert all(shifted[name] > 4 for name in shifted), shifted  # type: ignore[operator]
    summary = monitor.summary()
    assert summary["window_documents"] == 100 and summary["max_psi"] > 5


def test_unusable_reference_statistics_are_skipped_not_fatal() -> None:
    reference = synthetic_reference()
    reference["length"] = {"edges": [0, 10], "fractions": [1.0]}  # lengths differ
    monitor = DriftMonitor("m@1", reference, ["neg", "pos"], window=10, min_documents=1)
    assert monitor.statistics == ("unk_rate", "predicted_label", "confidence")


# ------------------------------------------------------------------------ a real server
WINDOW = 80


@pytest.fixture(scope="module")
def server(tiny_bundles: Path) -> InProcessServer:
    return InProcessServer(
        tiny_bundles, drift_window=WINDOW, drift_min_documents=60, max_batch_texts=40
    )


def classify_all(server: InProcessServer, texts: list[str]) -> None:
    for start in range(0, len(texts), 40):
        response = server.post("/classify", json={"texts": texts[start : start + 40]})
        assert response.status_code == 200, response.text


def drift_of(server: InProcessServer) -> dict[str, Any]:
    entry = next(m for m in server.get("/models").json()["models"] if m["task"] == "classify")
    return entry["drift"]


SHIFTED = [
    "Der Film war überraschend langweilig, und die Schauspieler wirkten völlig verloren.",
    "La película fue un desastre absoluto; el guion no tenía ningún sentido.",
    "Quarterly revenue grew four percent on stronger cloud subscriptions in Europe.",
    "def parse(self, raw): return json.loads(raw)['items'][0]",
    "Le réalisateur a tourné chaque scène avec une lenteur insupportable.",
    "Preheat the oven to 180 degrees, fold in the flour and bake for forty minutes.",
]


def test_drift_score_rises_on_shifted_traffic(server: InProcessServer, tiny_bundles: Path) -> None:
    manifest = json.loads((tiny_bundles / "imdb-sentiment" / "manifest.json").read_text())
    assert "reference_stats" in manifest
    assert drift_of(server)["max_psi"] is None  # nothing seen yet

    rng = random.Random(1234)  # not the seed the training/reference split was written with
    normal = [review(rng, positive=i % 2 == 0) for i in range(WINDOW)]
    classify_all(server, normal)
    calm = drift_of(server)
    assert calm["window_documents"] == WINDOW

    rng = random.Random(99)
    shifted = [" ".join(rng.sample(SHIFTED, 3)) for _ in range(WINDOW)]
    classify_all(server, shifted)
    drifted = drift_of(server)

    # Like the reference: no statistic past the "major shift" reading (0.25).
    assert calm["max_psi"] < calm["thresholds"]["major"], calm
    # Shifted: the input statistics move far past it, and far above the calm scores.
    assert drifted["psi"]["unk_rate"] > 1.0, drifted
    assert drifted["max_psi"] > 10 * calm["max_psi"], (calm, drifted)
    print(f"\nPSI normal traffic: {calm['psi']}\nPSI shifted traffic: {drifted['psi']}")

    # /metrics reports the same scores.
    _, samples = parse(server.get("/metrics").text)
    for statistic, score in drifted["psi"].items():
        assert value(
            samples, "drift_psi", model="imdb-sentiment@tiny-test", statistic=statistic
        ) == pytest.approx(score, abs=1e-6)
    assert value(samples, "drift_window_documents", model="imdb-sentiment@tiny-test") == WINDOW
