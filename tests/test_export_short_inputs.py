"""Short-input calibration at export (export/short_inputs.py): the fit, `python -m export
calibrate` on the real tiny bundle (a new version, re-hashed, the source untouched), what the
server answers with it (real app, real onnxruntime), an ensemble's calibration at its mean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_module
from server_harness import InProcessServer

from bundle import ClassifierModel, file_digest, load_bundle
from export.short_inputs import fit_calibration

SHORT_TEXT = "A fine film with a great cast."
LONG_TEXT = " ".join(["The plot was dull and the acting was poor, yet the music was lovely."] * 8)


def test_the_fit_recovers_a_known_scale_and_shift() -> None:
    rng = np.random.default_rng(0)
    margin = rng.normal(0.0, 4.0, 20000)  # the model's log p(pos) - log p(neg)
    truth = rng.random(20000) < 1 / (1 + np.exp(-(0.4 * margin - 0.8)))
    probabilities = np.stack([1 / (1 + np.exp(margin)), 1 / (1 + np.exp(-margin))], axis=1)
    fitted = fit_calibration(probabilities.astype(np.float32), truth.astype(int), max_tokens=64)
    assert fitted.scale == pytest.approx(0.4, abs=0.03)
    assert fitted.log_bias[0] == 0.0
    assert fitted.log_bias[1] == pytest.approx(-0.8, abs=0.08)
    assert fitted.max_tokens == 64


def _calibrate(source: Path, out: Path, version: str, data: Path) -> subprocess.CompletedProcess:
    args = ["calibrate", str(source), "--out", str(out), "--version", version, "--data", str(data)]
    return subprocess.run(
        [sys.executable, "-m", "export", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def calibrated(
    tiny_bundles: Path,
    tiny_run_and_bundles: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path, Path]:
    """(source bundle, calibrated bundle, synthetic corpus) from `python -m export calibrate`."""
    data = tiny_run_and_bundles[0].parent / "data"
    source = tiny_bundles / "imdb-sentiment"
    out = tmp_path_factory.mktemp("calibrated")
    proc = _calibrate(source, out, "tiny-test-cal", data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return source, out / "imdb-sentiment", data


def test_calibrate_writes_a_new_verified_version_and_leaves_the_source(
    calibrated: tuple[Path, Path, Path],
) -> None:
    source, target, _ = calibrated
    before = json.loads((source / "manifest.json").read_text())
    raw = json.loads((target / "manifest.json").read_text())
    assert "short_input" not in before
    assert (raw["version"], raw["calibrated_from"]) == ("tiny-test-cal", "imdb-sentiment@tiny-test")
    section = raw["short_input"]
    fitted = section["fitted"]
    assert fitted["data"].startswith("IMDB train split")  # fitted on train, never test
    assert fitted["sentences"] >= 100
    assert fitted["log_loss_after"] <= fitted["log_loss_before"]
    held_out = section["held_out"]
    assert held_out["documents"] == 200
    assert held_out["accuracy_int8_before"] == before["metrics"]["evaluation"]["accuracy_int8"]
    moved = held_out["rescored_correct_after"] - held_out["rescored_correct_before"]
    assert held_out["accuracy_int8_after"] == pytest.approx(
        held_out["accuracy_int8_before"] + moved / 200, abs=1e-5
    )
    assert raw["metrics"]["evaluation"]["accuracy_int8"] == held_out["accuracy_int8_after"]
    for name, entry in raw["files"].items():  # re-hashed, and the same weights as the source
        assert entry["sha256"] == file_digest(target / name) == file_digest(source / name)
    verify = subprocess.run([sys.executable, "-m", "bundle.verify", str(target)], cwd=REPO)
    assert verify.returncode == 0


def test_calibrate_refuses_the_same_version_or_overwriting_its_source(
    calibrated: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    source, _, data = calibrated
    same = _calibrate(source, tmp_path / "out", "tiny-test", data)
    assert same.returncode == 2 and "give a new one" in same.stderr
    assert not (tmp_path / "out").exists()
    onto = _calibrate(source, source.parent, "tiny-test-2", data)
    assert onto.returncode == 2 and "never rewritten" in onto.stderr
    assert "short_input" not in json.loads((source / "manifest.json").read_text())


def test_the_server_applies_it_to_short_inputs_only(
    calibrated: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    source, target, _ = calibrated
    raw_model = load_bundle(source)
    model = load_bundle(target)
    assert isinstance(raw_model, ClassifierModel) and isinstance(model, ClassifierModel)
    calibration = model.manifest.short_input
    assert calibration is not None
    short_ids, long_ids = (model.tokenizer.encode(t) for t in (SHORT_TEXT, LONG_TEXT))
    assert len(short_ids) <= calibration.max_tokens < len(long_ids)
    raw = raw_model.predict_ids([short_ids, long_ids], max_tokens=raw_model.run_tokens)

    models = tmp_path / "models"
    models.mkdir()
    (models / "imdb-sentiment").symlink_to(target)
    server = InProcessServer(models)
    body = server.post("/classify", json={"texts": [SHORT_TEXT, LONG_TEXT]}).json()
    served = np.array(
        [[r["probabilities"][label] for label in model.labels] for r in body["results"]]
    )
    expected_short = calibration.transform(raw[:1])[0]
    np.testing.assert_allclose(served[0], expected_short, atol=1e-5)
    assert np.abs(served[0] - raw[0]).max() > 1e-3  # it changed the short one...
    np.testing.assert_allclose(served[1], raw[1], atol=1e-6)  # ...and not the long one
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-5)
    listed = server.get("/models").json()["models"]
    (entry,) = [m for m in listed if m["name"] == "imdb-sentiment"]
    assert entry["short_input"]["scale"] == calibration.scale
    assert entry["short_input"]["log_bias"] == list(calibration.log_bias)


def test_an_ensemble_is_calibrated_at_its_mean(
    calibrated: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    source, target, data = calibrated
    run_module(  # two versions of one model: a valid ensemble whose mean is easy to check
        "export", "ensemble", str(source), str(target), "--out", str(tmp_path), "--name", "pair"
    )
    proc = _calibrate(tmp_path / "pair", tmp_path / "cal", "pair-cal", data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ensemble = load_bundle(tmp_path / "cal" / "pair")
    assert isinstance(ensemble, ClassifierModel)
    calibration = ensemble.manifest.short_input
    assert calibration is not None
    mean = ensemble.predict_texts([SHORT_TEXT])  # the members' raw sessions, averaged
    raw = load_bundle(source)
    assert isinstance(raw, ClassifierModel)
    np.testing.assert_allclose(mean, raw.predict_texts([SHORT_TEXT]), atol=1e-6)

    models = tmp_path / "models"
    models.mkdir()
    (models / "pair").symlink_to(tmp_path / "cal" / "pair")
    body = InProcessServer(models).post("/classify", json={"text": SHORT_TEXT}).json()
    served = [body["probabilities"][label] for label in ensemble.labels]
    np.testing.assert_allclose(served, calibration.transform(mean)[0], atol=1e-5)


def test_export_calibrate_short_publishes_the_bundle_only_with_it(
    tiny_run_and_bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    run_dir, _ = tiny_run_and_bundles
    out = tmp_path / "models"
    run_module(
        "export",
        "--run",
        str(run_dir),
        "--out",
        str(out),
        "--data",
        str(run_dir.parent / "data"),
        "--only",
        "classifier",
        "--version",
        "tiny-flag",
        "--calibrate-short",
    )
    assert sorted(p.name for p in out.iterdir()) == ["imdb-sentiment"]  # no staging left
    model = load_bundle(out / "imdb-sentiment")
    assert model.manifest.version == "tiny-flag"  # never published without it: same version
    assert model.manifest.short_input is not None
    raw = model.manifest.raw
    assert "calibrated_from" not in raw
    assert raw["short_input"]["held_out"]["documents"] == raw["metrics"]["evaluation"]["documents"]
