"""bundle/manifest.py and the keys the runtime reads from it: `multi_label`, `threshold`,
`direction`. Made from a copy of a shipped bundle (real ONNX, real onnxruntime session), whose
manifest is rewritten with `write_manifest` so the hashes stay valid."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bundle import BundleError, ClassifierModel, file_digest, load_bundle, load_manifest
from bundle.manifest import write_manifest

SHIPPED = Path(__file__).resolve().parent.parent / "models"


def _shipped(name: str) -> Path:
    path = SHIPPED / name
    if not (path / "manifest.json").is_file():
        pytest.skip(f"no shipped bundle at {path}")
    return path


def _variant(tmp_path: Path, name: str, **changes: Any) -> Path:
    """A copy of a shipped bundle with manifest keys changed (None removes a key)."""
    target = tmp_path / name
    shutil.copytree(_shipped(name), target)
    raw = json.loads((target / "manifest.json").read_text())
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    (target / "manifest.json").write_text(json.dumps(raw))
    return target


def _rewrite(directory: Path, **changes: Any) -> None:
    raw = json.loads((directory / "manifest.json").read_text())
    raw.update(changes)
    write_manifest(directory, raw)


def test_manifests_without_the_new_keys_load_as_forward_single_label() -> None:
    for name in ("imdb-sentiment", "imdb-lm"):
        manifest = load_manifest(_shipped(name))
        assert "direction" not in manifest.raw and "multi_label" not in manifest.raw
        assert manifest.backwards is False and manifest.multi_label is False
        assert manifest.threshold is None


@pytest.mark.parametrize(
    ("name", "changes", "problem"),
    [
        ("imdb-sentiment", {"direction": "sideways"}, "unknown direction"),
        ("imdb-sentiment", {"multi_label": "yes"}, "multi_label must be true or false"),
        ("imdb-sentiment", {"threshold": 0.4}, "threshold is for multi-label"),
        ("imdb-sentiment", {"multi_label": True, "threshold": 1.5}, "outside (0, 1)"),
        ("imdb-sentiment", {"multi_label": True, "threshold": "high"}, "must be a number"),
        ("imdb-lm", {"multi_label": True}, "classify bundles only"),
    ],
)
def test_bad_values_are_refused_by_name(
    tmp_path: Path, name: str, changes: dict[str, Any], problem: str
) -> None:
    directory = _variant(tmp_path, name, **changes)
    with pytest.raises(BundleError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        load_manifest(directory, verify_files=False)


def test_backward_classifier_reverses_ids_itself(tmp_path: Path) -> None:
    forward = load_bundle(_shipped("imdb-sentiment"))
    directory = _variant(tmp_path, "imdb-sentiment")
    _rewrite(directory, direction="backward")
    backward = load_bundle(directory)
    assert isinstance(forward, ClassifierModel) and isinstance(backward, ClassifierModel)
    assert backward.backwards and not forward.backwards
    docs = [forward.tokenizer.encode(t) for t in ("A fine, warm film.", "Dull and far too long")]
    reversed_docs = [d[::-1] for d in docs]
    np.testing.assert_array_equal(backward.predict_ids(docs), forward.predict_ids(reversed_docs))
    assert not np.allclose(backward.predict_ids(docs), forward.predict_ids(docs))


def test_multi_label_threshold_decides_the_labels(tmp_path: Path) -> None:
    directory = _variant(tmp_path, "imdb-sentiment")
    raw = json.loads((directory / "manifest.json").read_text())
    raw.pop("short_input", None)  # the shipped one's calibration is single-label only
    write_manifest(directory, raw)
    _rewrite(directory, multi_label=True, threshold=0.3)
    model = load_bundle(directory)
    assert isinstance(model, ClassifierModel)
    assert model.multi_label and model.threshold == 0.3
    first, second = model.labels
    assert model.chosen_labels([0.31, 0.9]) == [first, second]
    assert model.chosen_labels([0.3, 0.1]) == []  # strictly above, as fastai decodes
    raw = json.loads((directory / "manifest.json").read_text())
    raw.pop("threshold")
    write_manifest(directory, raw)
    assert load_manifest(directory).threshold == 0.5
    single = load_bundle(_shipped("imdb-sentiment"))
    assert isinstance(single, ClassifierModel)
    assert single.chosen_labels([0.2, 0.8]) == [second]


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 1_000_003])
def test_file_digest_is_the_sha256_of_the_bytes(tmp_path: Path, size: int) -> None:
    """Mapped or read (an empty file cannot be mapped), the digest is hashlib's of the bytes."""
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_digest(path) == hashlib.sha256(data).hexdigest()


def test_a_changed_byte_fails_verification(tmp_path: Path) -> None:
    """One flipped byte in the middle of the model: refused at load, naming the file."""
    target = tmp_path / "imdb-sentiment"
    shutil.copytree(_shipped("imdb-sentiment"), target)
    model = target / "model.ort"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.ort sha256"):
        load_manifest(target)
