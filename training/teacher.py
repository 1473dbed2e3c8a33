"""Teacher soft labels computed here, once, from a classifier bundle:
`python -m training soft-labels --teacher BUNDLE --data CORPUS --out FILE`.

Why a bundle and the CPU: the teacher is what is served (int8, possibly an ensemble), its fastai
learner need not exist anywhere, and a lent GPU machine has minutes, not the hour a CPU core
needs for 75k reviews. The teacher reads the corpus's token ids directly (`predict_ids`), so it
must number tokens as the corpus does: its tokenizer's vocab must equal the corpus vocab, or
nothing is scored or written. Raw model probabilities are stored: a bundle's short-input
calibration (bundle/calibration.py) is fitted per model, so the student gets its own with
`python -m export calibrate`.

Scoring is chunked: each chunk of CHUNK_DOCS reviews goes to FILE.parts/ as it finishes, and a
rerun with the same corpus and teacher continues from the chunks already there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from bundle import ClassifierModel, file_digest, load_bundle
from export.progress import Progress

from .corpus import TokenizedCorpus
from .soft_labels import FORMAT, SoftLabelError, SoftLabels, corpus_digest

CHUNK_DOCS = 1000  # reviews per resumable chunk (~1 min of a CPU core with the gpu teacher)
BATCH_DOCS = 32  # reviews per onnxruntime run, similar lengths together (little padding)
PARTS_META = "meta.json"


def bundle_digest(directory: Path) -> str:
    """sha256 over every file of a bundle directory (an ensemble's members included)."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(directory).as_posix()}\0{file_digest(path)}\n".encode())
    return h.hexdigest()


def check_vocab(corpus: TokenizedCorpus, teacher: ClassifierModel, teacher_dir: Path) -> None:
    """The teacher must number tokens as the corpus does, or its answers are about other words."""
    ours, theirs = corpus.vocab, teacher.tokenizer.vocab
    if ours == theirs:
        return
    first = next(
        (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
        min(len(ours), len(theirs)),
    )
    seen = (
        f"token {first} is {ours[first]!r} in the corpus, {theirs[first]!r} in the teacher"
        if first < min(len(ours), len(theirs))
        else "one vocab is a prefix of the other"
    )
    raise SoftLabelError(
        f"the corpus vocab ({len(ours)} tokens) differs from the tokenizer of {teacher_dir} "
        f"({len(theirs)}): {seen}. Tokenize with the config the teacher was trained with "
        "(python -m training tokenize), or pick the teacher trained on this corpus."
    )


def _parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _open_parts(parts: Path, identity: dict[str, Any]) -> None:
    """Create FILE.parts, or reuse it when it was started for the same corpus and teacher."""
    meta_path = parts / PARTS_META
    if meta_path.is_file():
        found = json.loads(meta_path.read_text(encoding="utf-8"))
        if found != identity:
            raise SoftLabelError(
                f"{parts} holds chunks of another corpus or teacher ({found}); delete it to "
                "start over"
            )
        return
    parts.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(identity), encoding="utf-8")


def _score_chunk(
    teacher: ClassifierModel, corpus: TokenizedCorpus, docs: range, bar: Progress
) -> np.ndarray:
    """The teacher's probabilities for `docs`, in that order, batched by length."""
    starts, ends = (
        corpus.offsets[docs.start : docs.stop],
        corpus.offsets[docs.start + 1 : docs.stop + 1],
    )
    by_length = np.argsort(ends - starts, kind="stable")
    out = np.zeros((len(docs), len(teacher.labels)), dtype=np.float32)
    for i in range(0, len(by_length), BATCH_DOCS):
        rows = by_length[i : i + BATCH_DOCS]
        batch: list[Any] = [corpus.ids[starts[r] : ends[r]].astype(np.int64) for r in rows]
        out[rows] = teacher.predict_ids(batch)
        bar.update(len(rows))
    return out


def compute_soft_labels(
    teacher_dir: Path, corpus_dir: Path, out: Path, threads: int = 1, chunk_docs: int = CHUNK_DOCS
) -> SoftLabels:
    """Score every review of the corpus with the teacher bundle and write `out` (see above).
    Everything is checked before anything is written."""
    corpus = TokenizedCorpus.load(corpus_dir)
    teacher = load_bundle(teacher_dir, threads=threads)
    if not isinstance(teacher, ClassifierModel) or teacher.multi_label:
        raise SoftLabelError(f"{teacher_dir}: the teacher must be a single-label classifier bundle")
    check_vocab(corpus, teacher, teacher_dir)
    unknown = sorted(set(corpus.labels) - set(teacher.labels))
    if unknown:
        raise SoftLabelError(f"corpus labels {unknown} are not the teacher's {teacher.labels}")
    identity = {
        "corpus_sha256": corpus_digest(corpus),
        "teacher_sha256": bundle_digest(teacher_dir),
        "chunk_docs": chunk_docs,
    }
    parts = _parts_dir(out)
    _open_parts(parts, identity)
    n_docs = len(corpus.offsets) - 1
    chunks = [range(s, min(s + chunk_docs, n_docs)) for s in range(0, n_docs, chunk_docs)]
    done = [i for i in range(len(chunks)) if (parts / f"part-{i:05d}.npy").is_file()]
    todo = sum(len(chunks[i]) for i in range(len(chunks)) if i not in done)
    if done:
        print(f"soft labels: {len(done)} of {len(chunks)} chunks already in {parts}", flush=True)
    started = time.perf_counter()
    with Progress(todo, "teacher soft labels", unit="review") as bar:
        for i, docs in enumerate(chunks):
            path = parts / f"part-{i:05d}.npy"
            if path.is_file():
                continue
            probs = _score_chunk(teacher, corpus, docs, bar)
            tmp = path.with_name(path.name + ".tmp")
            with tmp.open("wb") as f:
                np.save(f, probs)
            os.replace(tmp, path)
    seconds = time.perf_counter() - started
    probabilities = np.concatenate(
        [np.load(parts / f"part-{i:05d}.npy") for i in range(len(chunks))]
    )
    answers = probabilities[: corpus.n_train].argmax(axis=1)
    truth = np.array([teacher.labels.index(label) for label in corpus.labels])
    soft = SoftLabels(
        probabilities.astype(np.float16),
        {
            "format": FORMAT,
            "labels": teacher.labels,
            "teacher": {
                "dir": str(teacher_dir),
                "model_id": teacher.manifest.model_id,
                "sha256": identity["teacher_sha256"],
            },
            "corpus": {
                "dir": str(corpus_dir),
                "sha256": identity["corpus_sha256"],
                "config": corpus.config,
                "documents": n_docs,
                "train_documents": corpus.n_train,
            },
            # the teacher saw most train reviews in training: a check that ids and labels line
            # up (a wrong numbering shows as chance), not a held-out accuracy
            "teacher_train_accuracy": float(np.mean(answers == truth)),
            "scored_here": {
                "reviews": todo,
                "seconds": round(seconds, 1),
                "reviews_per_second": round(todo / seconds, 2) if seconds > 0 else None,
                "threads": threads,
            },
        },
    )
    soft.save(out)
    shutil.rmtree(parts)
    return soft
