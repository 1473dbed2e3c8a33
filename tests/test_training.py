"""The training system: the `tiny` config really trains (fastai, real data loaders) and learns."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from training.config import CONFIGS, get_config
from training.data import load_imdb


def test_tiny_lm_loss_goes_down(tiny_run_and_bundles: tuple[Path, Path]) -> None:
    run, _ = tiny_run_and_bundles
    lm = json.loads((run / "metrics.json").read_text())["lm"]
    assert lm["steps"] > 10
    assert lm["train_loss_end"] < lm["train_loss_start"] - 0.5, lm
    # better than a uniform guess over the vocabulary
    assert lm["valid_loss"] < math.log(lm["vocab_size"]) - 1.0, lm


def test_tiny_classifier_learns_the_synthetic_labels(
    tiny_run_and_bundles: tuple[Path, Path],
) -> None:
    run, _ = tiny_run_and_bundles
    clf = json.loads((run / "metrics.json").read_text())["classifier"]
    assert clf["labels"] == ["neg", "pos"]
    assert clf["valid_accuracy"] >= 0.75, clf


def test_run_directory_holds_what_export_needs(tiny_run_and_bundles: tuple[Path, Path]) -> None:
    run, _ = tiny_run_and_bundles
    for name in (
        "config.json",
        "vocab.json",
        "metrics.json",
        "lm.pkl",
        "classifier.pkl",
        "models/encoder.pth",
    ):
        assert (run / name).exists(), name
    vocab = json.loads((run / "vocab.json").read_text())
    assert vocab[:9] == [
        "xxunk",
        "xxpad",
        "xxbos",
        "xxeos",
        "xxfld",
        "xxrep",
        "xxwrep",
        "xxup",
        "xxmaj",
    ]
    assert len(vocab) % 8 == 0
    hw = json.loads((run / "metrics.json").read_text())["lm"]["hardware"]
    assert hw["cpu_count"] >= 1 and "cuda" in hw


def test_named_configs() -> None:
    assert {"tiny", "compact", "full"} <= set(CONFIGS)
    full = CONFIGS["full"]
    assert (full.emb_sz, full.n_hid, full.n_layers) == (400, 1152, 3)  # fastai's default AWD-LSTM
    assert get_config("compact", lm_docs=10).lm_docs == 10
    with pytest.raises(KeyError, match="unknown config"):
        get_config("huge")


def test_data_reader_refuses_an_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no IMDB data"):
        load_imdb(tmp_path)


def test_data_reader_reads_fastai_folder_layout(tmp_path: Path) -> None:
    for split, label, text in [
        ("train", "pos", "Great film."),
        ("train", "neg", "Awful."),
        ("train", "unsup", "Hm."),
        ("test", "pos", "Loved it."),
        ("test", "neg", "Boring."),
    ]:
        (tmp_path / split / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / split / label / "0_1.txt").write_text(text, encoding="utf-8")
    data = load_imdb(tmp_path)
    assert sorted(data.train["label"]) == ["neg", "pos"]
    assert data.unsup["text"].tolist() == ["Hm."]
    assert data.test is not None and len(data.test) == 2


@pytest.mark.imdb
def test_data_reader_reads_the_imdb_csv_layout(imdb: Path) -> None:
    data = load_imdb(imdb)
    assert set(data.train["label"]) == {"neg", "pos"}
    assert len(data.train) >= 500
