"""The manifest's "short_input" section (bundle/calibration.py): what it does to probabilities,
and that a corrupt or out-of-range one refuses the bundle loudly (real tiny bundles)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_harness import bundle_copy

from bundle import BundleError, load_bundle
from bundle.calibration import ShortInputCalibration

GOOD = {"max_tokens": 4, "scale": 0.5, "log_bias": [0.0, -1.0]}


def test_short_rows_get_the_tempered_shifted_softmax_and_long_rows_are_untouched() -> None:
    calibration = ShortInputCalibration.parse(GOOD, ["neg", "pos"], multi_label=False)
    probabilities = np.array([[0.2, 0.8], [0.2, 0.8], [0.999, 0.001]], dtype=np.float32)
    out = calibration.apply(probabilities, [4, 5, 1])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[1], probabilities[1])  # 5 tokens: over max_tokens
    logit = 0.5 * math.log(0.8 / 0.2) - 1.0  # pos minus neg after the calibration
    assert out[0, 1] == pytest.approx(1 / (1 + math.exp(-logit)), abs=1e-6)
    assert out[0, 1] < 0.5 < probabilities[0, 1]  # the shift moved the answer
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
    assert calibration.apply(probabilities, [9, 9, 9]) is probabilities  # nothing short


def test_three_labels_stay_a_distribution() -> None:
    calibration = ShortInputCalibration.parse(
        {"max_tokens": 10, "scale": 2.0, "log_bias": [0.0, 1.0, -3.0]}, ["a", "b", "c"], False
    )
    p = np.array([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0]], dtype=np.float32)
    out = calibration.apply(p, [3, 3])
    expected = np.exp(2.0 * np.log(p[0].astype(np.float64)) + np.array([0.0, 1.0, -3.0]))
    np.testing.assert_allclose(out[0], expected / expected.sum(), atol=1e-6)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
    assert np.isfinite(out).all()  # a zero probability stays a (tiny) probability


@pytest.mark.parametrize(
    "section,message",
    [
        ({**GOOD, "scale": 0.0}, "scale"),
        ({**GOOD, "scale": "0.5"}, "scale"),
        ({**GOOD, "scale": float("nan")}, "scale"),
        ({**GOOD, "scale": 11.0}, "scale"),
        ({**GOOD, "log_bias": [0.0]}, "one number per label"),
        ({**GOOD, "log_bias": [0.0, 25.0]}, "log_bias"),
        ({**GOOD, "log_bias": [0.0, True]}, "log_bias"),
        ({**GOOD, "max_tokens": 0}, "max_tokens"),
        ({**GOOD, "max_tokens": 4.5}, "max_tokens"),
        ({"scale": 0.5, "log_bias": [0.0, -1.0]}, "max_tokens"),
        ([1, 2], "must be an object"),
    ],
)
def test_a_corrupt_or_out_of_range_section_refuses_the_bundle(
    tiny_bundles: Path, tmp_path: Path, section: Any, message: str
) -> None:
    bad = bundle_copy(tiny_bundles / "imdb-sentiment", tmp_path, short_input=section)
    with pytest.raises(BundleError, match=message):
        load_bundle(bad)


def test_only_single_label_classifiers_take_it(tiny_bundles: Path, tmp_path: Path) -> None:
    multi = bundle_copy(
        tiny_bundles / "imdb-sentiment", tmp_path / "m", multi_label=True, short_input=GOOD
    )
    with pytest.raises(BundleError, match="single-label"):
        load_bundle(multi)
    lm = bundle_copy(tiny_bundles / "imdb-lm", tmp_path / "g", short_input=GOOD)
    with pytest.raises(BundleError, match="classify bundles only"):
        load_bundle(lm)


def test_a_valid_section_loads_and_verify_refuses_a_bad_one(
    tiny_bundles: Path, tmp_path: Path
) -> None:
    good = bundle_copy(tiny_bundles / "imdb-sentiment", tmp_path / "ok", short_input=GOOD)
    model = load_bundle(good)
    assert model.manifest.short_input == ShortInputCalibration(4, 0.5, (0.0, -1.0))
    bad = bundle_copy(
        tiny_bundles / "imdb-sentiment", tmp_path / "bad", short_input={**GOOD, "scale": -1}
    )
    verify = [sys.executable, "-m", "bundle.verify"]
    assert subprocess.run([*verify, str(good)], capture_output=True).returncode == 0
    refused = subprocess.run([*verify, str(bad)], capture_output=True, text=True)
    assert refused.returncode != 0
    assert "scale" in refused.stdout + refused.stderr
    source = json.loads((tiny_bundles / "imdb-sentiment" / "manifest.json").read_text())
    assert "short_input" not in source  # the copies changed, never the source
