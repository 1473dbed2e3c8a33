"""A pre-tokenized IMDB corpus: fastai tokenization done once on the CPU, stored as compact ids.

Why: tokenizing 75k reviews takes minutes and needs spaCy; a GPU machine lent for a few minutes
should spend them training. `python -m training tokenize --config NAME --out DIR` writes
`corpus.npz` (uint16 ids of train + unsup reviews, offsets, train labels, the config's LM order)
and `corpus.json` (vocab, config name, source digest). Training accepts such a directory as
`--data`, and gives fastai exactly the token lists and vocab it would have built from the text.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .config import TrainConfig
from .data import ImdbData
from .tokens import tokenize_cached

CORPUS_FILE = "corpus.npz"
META_FILE = "corpus.json"


def is_corpus_dir(path: Path) -> bool:
    return (path / CORPUS_FILE).exists() and (path / META_FILE).exists()


def lm_order(n_docs: int, cfg: TrainConfig) -> np.ndarray:
    """Indices (into train + unsup) of the LM corpus: shuffled with the config's seed, capped at
    lm_docs. The text path (training/ulmfit.py) takes its documents in this order too."""
    order = pd.Series(np.arange(n_docs)).sample(frac=1.0, random_state=cfg.seed).to_numpy()
    return order if cfg.lm_docs is None else order[: cfg.lm_docs]


def clf_rows(n_train: int, cfg: TrainConfig) -> np.ndarray:
    """Rows of train used for the classifier: all, or a seeded sample (the text path uses it too)."""
    rows = pd.Series(np.arange(n_train))
    return (
        rows if cfg.clf_docs is None else rows.sample(n=cfg.clf_docs, random_state=cfg.seed)
    ).to_numpy()


def build_vocab(docs: list[list[str]], cfg: TrainConfig) -> list[str]:
    """fastai's vocab of the LM documents, with the config's frequency floor and size cap."""
    from fastai.text.all import make_vocab

    return make_vocab(
        Counter(t for doc in docs for t in doc), min_freq=cfg.min_freq, max_vocab=cfg.max_vocab
    )


@dataclass
class TokenizedCorpus:
    ids: np.ndarray  # uint16, all documents concatenated (train rows, then unsup rows)
    offsets: np.ndarray  # int64, len n_docs + 1
    labels: list[str]  # one per train row
    lm_order: np.ndarray  # int64 indices of the LM documents, in LM order
    vocab: list[str]
    config: str  # the config whose lm_docs/seed/vocab settings built it
    source_sha256: str

    @property
    def n_train(self) -> int:
        return len(self.labels)

    def doc_tokens(self, indices: np.ndarray) -> list[list[str]]:
        vocab = np.asarray(self.vocab, dtype=object)
        return [vocab[self.ids[self.offsets[i] : self.offsets[i + 1]]].tolist() for i in indices]

    def lm_tokens(self) -> list[list[str]]:
        return self.doc_tokens(self.lm_order)

    def clf_tokens(self, cfg: TrainConfig) -> tuple[list[list[str]], list[str]]:
        rows = clf_rows(self.n_train, cfg)
        return self.doc_tokens(rows), [self.labels[i] for i in rows]

    def check_matches(self, cfg: TrainConfig) -> None:
        """A corpus fixes the LM documents and the vocab: refuse a config that would differ."""
        expected = lm_order(len(self.offsets) - 1, cfg)
        if len(expected) != len(self.lm_order) or not np.array_equal(expected, self.lm_order):
            raise ValueError(
                f"corpus was built for config {self.config!r}; its LM documents differ from {cfg.name!r}'s"
            )

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            out / CORPUS_FILE,
            ids=self.ids,
            offsets=self.offsets,
            lm_order=self.lm_order,
            labels=np.asarray(self.labels),
        )
        meta = {
            "vocab": self.vocab,
            "config": self.config,
            "source_sha256": self.source_sha256,
            "docs": len(self.offsets) - 1,
            "train_docs": self.n_train,
            "lm_docs": len(self.lm_order),
            "tokens": int(self.offsets[-1]),
        }
        (out / META_FILE).write_text(json.dumps(meta), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> TokenizedCorpus:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        with np.load(path / CORPUS_FILE) as z:
            return cls(
                ids=z["ids"],
                offsets=z["offsets"],
                labels=z["labels"].tolist(),
                lm_order=z["lm_order"],
                vocab=meta["vocab"],
                config=meta["config"],
                source_sha256=meta["source_sha256"],
            )


def build_corpus(data: ImdbData, cfg: TrainConfig, cache_dir: Path) -> TokenizedCorpus:
    """Tokenize train + unsup with fastai (cached), build the vocab from the LM documents exactly
    as `train_lm` does, and encode everything as uint16 ids (unknown tokens become xxunk)."""
    texts = pd.concat([data.train["text"], data.unsup["text"]], ignore_index=True)
    tokens = tokenize_cached(texts, cache_dir, "all", cfg.n_workers)
    order = lm_order(len(tokens), cfg)
    vocab = build_vocab([tokens[i] for i in order], cfg)
    if len(vocab) > np.iinfo(np.uint16).max:
        raise ValueError(f"vocab of {len(vocab)} does not fit uint16 ids")
    index = {tok: i for i, tok in enumerate(vocab)}
    unk = index["xxunk"]
    lengths = np.fromiter((len(doc) for doc in tokens), dtype=np.int64, count=len(tokens))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = np.fromiter(
        (index.get(t, unk) for doc in tokens for t in doc), dtype=np.uint16, count=int(offsets[-1])
    )
    digest = hashlib.sha256("\x00".join(texts.tolist()).encode("utf-8")).hexdigest()
    return TokenizedCorpus(
        ids=ids,
        offsets=offsets,
        labels=data.train["label"].astype(str).tolist(),
        lm_order=order.astype(np.int64),
        vocab=vocab,
        config=cfg.name,
        source_sha256=digest,
    )
