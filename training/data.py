"""IMDB readers. Two layouts: the CSV layout of `shared/data/imdb` (train/test/unsup .csv.gz,
or a single sample.csv), and fastai's folder layout (`aclImdb/{train,test}/{pos,neg,unsup}/*.txt`,
what `untar_data(URLs.IMDB)` gives online users)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

DATA_ENV = "IMDB_DIR"
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "imdb"


@dataclass
class ImdbData:
    train: pd.DataFrame  # columns: text, label
    unsup: pd.DataFrame  # column: text
    test: pd.DataFrame | None  # columns: text, label (never used for training)


def resolve_data_dir(path: str | os.PathLike[str] | None, download: bool = False) -> Path:
    """Flag, then $IMDB_DIR, then ../shared/data/imdb; `download` fetches fastai's copy (online only)."""
    if download:
        from fastai.data.external import URLs, untar_data

        return Path(untar_data(URLs.IMDB))
    return Path(path or os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)


def _read_folder_split(root: Path, split: str, labels: tuple[str, ...]) -> pd.DataFrame:
    rows = [
        {"text": f.read_text(encoding="utf-8"), "label": label}
        for label in labels
        for f in sorted((root / split / label).glob("*.txt"))
    ]
    return pd.DataFrame(rows, columns=["text", "label"])


def load_imdb(path: Path) -> ImdbData:
    """Read whichever layout `path` holds; raise FileNotFoundError naming what was looked for."""
    if (path / "train.csv.gz").exists():
        unsup = path / "unsup.csv.gz"
        test = path / "test.csv.gz"
        return ImdbData(
            train=pd.read_csv(path / "train.csv.gz"),
            unsup=pd.read_csv(unsup) if unsup.exists() else pd.DataFrame({"text": []}),
            test=pd.read_csv(test) if test.exists() else None,
        )
    if (path / "sample.csv").exists():  # fastai IMDB_SAMPLE layout: text,label,is_valid
        df = pd.read_csv(path / "sample.csv")
        valid = df["is_valid"].astype(str) == "True"
        return ImdbData(
            train=df[~valid][["text", "label"]],
            unsup=pd.DataFrame({"text": []}),
            test=df[valid][["text", "label"]],
        )
    if (path / "train" / "pos").is_dir():
        unsup = _read_folder_split(path, "train", ("unsup",))[["text"]]
        return ImdbData(
            train=_read_folder_split(path, "train", ("neg", "pos")),
            unsup=unsup,
            test=_read_folder_split(path, "test", ("neg", "pos"))
            if (path / "test").is_dir()
            else None,
        )
    raise FileNotFoundError(
        f"no IMDB data in {path}: expected train.csv.gz (CSV layout), sample.csv, or train/pos/ "
        f"(fastai folder layout); set --data or ${DATA_ENV}, or pass --download when online"
    )
