"""fastai tokenization of review texts, cached and with progress.

Tokenizing is the slow part of data prep (about 3 minutes for the 75k train + unsup reviews on
two cores), so it is done once per set of texts and cached. fastai's `tokenize_df` splits the
texts into one chunk per worker and reports nothing until all are done; here the same tokenizer
(`TokenizeWithRules` over fastai's default word tokenizer and rules, as `tokenize_df` builds it)
runs over small chunks in a process pool, so a progress line can say how far it is.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pandas as pd

from export.progress import Progress

CHUNK_TEXTS = 500  # texts per task: ~1 s of spaCy on one core, fine-grained enough for an ETA

_worker_tokenizer: Any = None


def _fastai_tokenizer() -> Any:
    from fastai.text.all import TokenizeWithRules, WordTokenizer, defaults

    return TokenizeWithRules(WordTokenizer(), rules=defaults.text_proc_rules)


def _init_worker() -> None:
    global _worker_tokenizer
    _worker_tokenizer = _fastai_tokenizer()


def _tokenize_chunk(texts: list[str]) -> list[list[str]]:
    return [list(doc) for doc in _worker_tokenizer(texts)]


def tokenize_texts(
    texts: list[str], n_workers: int, label: str = "tokenize", chunk_texts: int = CHUNK_TEXTS
) -> list[list[str]]:
    """fastai's tokens for each text, in order (what `tokenize_df(...)[0]["text"]` holds)."""
    chunks = [texts[i : i + chunk_texts] for i in range(0, len(texts), chunk_texts)]
    results: list[list[list[str]]] = [[] for _ in chunks]
    with Progress(len(texts), label, unit="doc") as bar:
        if n_workers <= 1:
            _init_worker()
            for i, chunk in enumerate(chunks):
                results[i] = _tokenize_chunk(chunk)
                bar.update(len(chunk))
        else:
            with ProcessPoolExecutor(n_workers, initializer=_init_worker) as pool:
                futures = {pool.submit(_tokenize_chunk, c): i for i, c in enumerate(chunks)}
                for future in as_completed(futures):
                    i = futures[future]
                    results[i] = future.result()
                    bar.update(len(chunks[i]))
    return [doc for chunk in results for doc in chunk]


def tokenize_cached(texts: pd.Series, cache_dir: Path, tag: str, n_workers: int) -> list[list[str]]:
    """Tokenize once per distinct list of texts: the cache file is named by their digest."""
    as_list = [str(t) for t in texts.tolist()]
    digest = hashlib.sha256("\x00".join(as_list).encode("utf-8")).hexdigest()[:16]
    path = cache_dir / f"{tag}-{digest}.pkl"
    if path.exists():
        return pd.read_pickle(path)
    tokens = tokenize_texts(as_list, n_workers, f"tokenize {tag}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    pd.to_pickle(tokens, path)
    return tokens
