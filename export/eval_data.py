"""What export's checks run on: held-out texts the user gives (`--eval-csv`), the IMDB test split
(`--run`), or, without either, texts made from the learner's own vocabulary.

Read with pandas only: export never imports training/ (the dependency points the other way).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

SYNTHETIC_SEED = 0
SYNTHETIC_LENGTHS = (1, 3, 7, 12, 20, 35, 60, 110)  # words; long texts are added per learner


class EvalDataError(Exception):
    """The held-out data cannot be read or does not fit the learner (one-line reason)."""


@dataclass(frozen=True)
class EvalData:
    """Texts for the checks; `labels` (one list of label names per text) only for classifiers.
    `held_out` is False for generated texts: no accuracy or perplexity is claimed from them."""

    texts: list[str]
    labels: list[list[str]] | None
    description: str
    held_out: bool = True


def read_eval_csv(
    path: Path, text_col: str, label_col: str | None, label_delim: str | None
) -> EvalData:
    """A user's held-out CSV: one text per row, its label(s) in `label_col` (split on
    `label_delim` for a multi-label learner)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise EvalDataError(f"--eval-csv {path}: cannot read it ({e})") from None
    for column in (text_col, label_col):
        if column is not None and column not in frame.columns:
            raise EvalDataError(
                f"--eval-csv {path}: no column {column!r} (columns: {', '.join(frame.columns)})"
            )
    if frame.empty:
        raise EvalDataError(f"--eval-csv {path}: no rows")
    labels = None
    if label_col is not None:
        raw = frame[label_col].tolist()
        labels = [v.split(label_delim) if label_delim else [v] for v in raw]
        labels = [[label for label in row if label] for row in labels]
    return EvalData(
        texts=frame[text_col].tolist(),
        labels=labels,
        description=f"{path.name}: {len(frame)} held-out rows given with --eval-csv",
    )


def imdb_held_out(data_dir: Path) -> pd.DataFrame:
    """The IMDB test split (text, label) in any layout training/ reads: test.csv.gz,
    sample.csv's is_valid rows, or test/{neg,pos}/*.txt."""
    if (data_dir / "test.csv.gz").exists():
        return pd.read_csv(data_dir / "test.csv.gz")[["text", "label"]]
    if (data_dir / "sample.csv").exists():
        frame = pd.read_csv(data_dir / "sample.csv")
        return frame[frame["is_valid"].astype(str) == "True"][["text", "label"]]
    rows = [
        {"text": f.read_text(encoding="utf-8"), "label": label}
        for label in ("neg", "pos")
        for f in sorted((data_dir / "test" / label).glob("*.txt"))
    ]
    if not rows:
        raise EvalDataError(
            f"no IMDB test split in {data_dir} (test.csv.gz, sample.csv or test/pos/); set --data"
        )
    return pd.DataFrame(rows, columns=["text", "label"])


def _words(vocab: list[str]) -> list[str]:
    """Plain words of the vocabulary: no special tokens, no whitespace or ▁ tokens."""
    words = [
        v
        for v in vocab
        if v and not v.startswith("xx") and v.isprintable() and " " not in v and "▁" not in v
    ]
    return words or ["the"]


def synthetic_texts(vocab: list[str], count: int, long_words: int = 0) -> list[str]:
    """Seeded texts drawn from the learner's vocabulary, with capitals and punctuation so that
    fastai's rules fire (xxmaj, xxup, xxrep); `long_words` adds texts past a classifier's
    max_len so its pooling window is exercised."""
    rng = random.Random(SYNTHETIC_SEED)
    words = _words(vocab)
    lengths = [SYNTHETIC_LENGTHS[i % len(SYNTHETIC_LENGTHS)] for i in range(count)]
    if long_words:
        lengths[-2:] = [long_words, long_words + 37][: min(2, count)]
    texts = []
    for i, n in enumerate(lengths):
        chosen = [rng.choice(words) for _ in range(n)]
        chosen[0] = chosen[0].capitalize()
        if i % 3 == 1:
            chosen[-1] = chosen[-1].upper()
        text = " ".join(chosen) + ("!!!" if i % 4 == 2 else ".")
        texts.append(text)
    return texts


def generated(vocab: list[str], count: int, long_words: int = 0) -> EvalData:
    return EvalData(
        texts=synthetic_texts(vocab, count, long_words),
        labels=None,
        description=(
            f"{count} texts generated from the learner's vocabulary (seed {SYNTHETIC_SEED}); "
            "no held-out evaluation was made (pass --eval-csv for one)"
        ),
        held_out=False,
    )
