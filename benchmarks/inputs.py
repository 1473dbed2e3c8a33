"""The benchmark's inputs: real IMDB test reviews by length, and generation prompts.

Reviews are picked deterministically from bands of the test split's length distribution
(characters): short around the 10th percentile, median around the 50th, long around the 95th.
Prompts are the opening words of other test reviews (from both labels), as a user might type them.
"""

from __future__ import annotations

import csv
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
LENGTH_BANDS: dict[str, tuple[float, float]] = {
    "short": (5.0, 15.0),
    "median": (45.0, 55.0),
    "long": (90.0, 99.0),
}
PROMPT_WORDS = 6


def default_imdb_dir() -> Path:
    """$IMDB_DIR, else ../shared/data/imdb beside the repository (as the tests use it)."""
    return Path(os.environ.get("IMDB_DIR") or REPO.parent / "shared" / "data" / "imdb")


@dataclass(frozen=True)
class Inputs:
    reviews: dict[str, list[str]]  # band name -> reviews
    prompts: list[str]
    source: str
    test_reviews: int  # size of the split they were drawn from
    band_chars: dict[str, tuple[int, int]]  # band -> (min, max) characters of the picked reviews


def read_test_reviews(imdb_dir: Path) -> list[str]:
    path = imdb_dir / "test.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"IMDB test split not found at {path} (set IMDB_DIR or --imdb)")
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        return [row["text"] for row in csv.DictReader(handle)]


def evenly_spaced(items: list[str], count: int) -> list[str]:
    if count >= len(items):
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, count).round()]


def pick_inputs(imdb_dir: Path, per_band: int, n_prompts: int) -> Inputs:
    """`per_band` reviews from each length band, `n_prompts` prompts; same every run."""
    texts = read_test_reviews(imdb_dir)
    by_length = sorted(texts, key=lambda t: (len(t), t))
    reviews: dict[str, list[str]] = {}
    band_chars: dict[str, tuple[int, int]] = {}
    for band, (low, high) in LENGTH_BANDS.items():
        start = int(len(by_length) * low / 100)
        stop = max(start + 1, int(len(by_length) * high / 100))
        picked = evenly_spaced(by_length[start:stop], per_band)
        reviews[band] = picked
        band_chars[band] = (min(map(len, picked)), max(map(len, picked)))
    # Prompts: opening words of reviews spread over the whole file (neg rows, then pos rows).
    used = {t for band in reviews.values() for t in band}
    openings = []
    for text in evenly_spaced(texts, n_prompts * 10):
        words = text.replace("<br />", " ").split()
        if (
            text not in used
            and len(words) >= PROMPT_WORDS
            and all(w.isascii() for w in words[:PROMPT_WORDS])
        ):
            openings.append(" ".join(words[:PROMPT_WORDS]))
    prompts = evenly_spaced(openings, n_prompts)
    return Inputs(reviews, prompts, str(imdb_dir / "test.csv.gz"), len(texts), band_chars)
