"""A small synthetic review corpus the tests write themselves (no downloads, no shared data).

Labels follow the sentiment words, so even the `tiny` config learns something; the text mixes
in what fastai's rules and spaCy's tokenizer care about (HTML breaks, ALL CAPS, Capitals,
repeated characters and words, contractions, punctuation).
"""

from __future__ import annotations

import csv
import gzip
import random
from pathlib import Path

POSITIVE = [
    "wonderful",
    "brilliant",
    "great",
    "moving",
    "superb",
    "delightful",
    "excellent",
    "loved",
]
NEGATIVE = ["dreadful", "boring", "awful", "terrible", "dull", "horrible", "waste", "hated"]
SUBJECTS = [
    "The acting",
    "This movie",
    "The plot",
    "The director's work",
    "The soundtrack",
    "Every scene",
]
FILLERS = [
    "I watched it twice.",
    "My friends didn't agree.",
    "It's two hours long!!!",
    "<br /><br />See it in a theater.",
    "The CAST includes many names.",
    "We saw it in 2019, at 7:30 pm.",
    "Really, really, really long credits...",
    "(Spoilers ahead.)",
    "The ending isn't what you'd expect.",
]
NEUTRAL = [
    "film",
    "story",
    "camera",
    "night",
    "city",
    "family",
    "music",
    "ending",
    "character",
    "scene",
]


def review(rng: random.Random, positive: bool) -> str:
    words = POSITIVE if positive else NEGATIVE
    sentences = []
    for _ in range(rng.randint(3, 7)):
        sentences.append(
            f"{rng.choice(SUBJECTS)} was {rng.choice(words)} and the {rng.choice(NEUTRAL)} "
            f"felt {rng.choice(words)}."
        )
        if rng.random() < 0.5:
            sentences.append(rng.choice(FILLERS))
    return " ".join(sentences)


def _write(path: Path, rows: list[dict[str, str]], fields: list[str]) -> None:
    with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_corpus(
    directory: Path, n_train: int = 600, n_test: int = 200, n_unsup: int = 200, seed: int = 0
) -> Path:
    """Write train/test/unsup .csv.gz in the IMDB CSV layout that training.data reads."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)

    def labeled(n: int) -> list[dict[str, str]]:
        return [
            {"text": review(rng, i % 2 == 0), "label": "pos" if i % 2 == 0 else "neg"}
            for i in range(n)
        ]

    _write(directory / "train.csv.gz", labeled(n_train), ["text", "label"])
    _write(directory / "test.csv.gz", labeled(n_test), ["text", "label"])
    _write(
        directory / "unsup.csv.gz",
        [{"text": review(rng, rng.random() < 0.5)} for _ in range(n_unsup)],
        ["text"],
    )
    return directory
