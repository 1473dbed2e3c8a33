"""export/staging.py: a bundle folder appears whole, after its block finished, or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.staging import staged_bundle


def test_success_replaces_the_old_bundle_only_at_the_end(tmp_path: Path) -> None:
    old = tmp_path / "m"
    old.mkdir()
    (old / "manifest.json").write_text("old")
    with staged_bundle(tmp_path, "m") as staging:
        (staging / "manifest.json").write_text("new")
        assert (old / "manifest.json").read_text() == "old"  # still served meanwhile
    assert (old / "manifest.json").read_text() == "new"
    assert not (tmp_path / ".m.staging").exists()


def test_failure_leaves_the_old_bundle_and_nothing_else(tmp_path: Path) -> None:
    old = tmp_path / "m"
    old.mkdir()
    (old / "manifest.json").write_text("old")
    with pytest.raises(RuntimeError), staged_bundle(tmp_path, "m") as staging:
        (staging / "model.onnx").write_text("half")
        raise RuntimeError("check failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert (old / "manifest.json").read_text() == "old"


def test_failure_removes_an_output_folder_it_created(tmp_path: Path) -> None:
    out = tmp_path / "new-models"
    with pytest.raises(KeyboardInterrupt), staged_bundle(out, "m"):
        raise KeyboardInterrupt
    assert not out.exists()
