"""`python -m training soft-labels` (training/teacher.py, training/soft_labels.py): the tiny
classifier bundle scores a pre-tokenized corpus's ids exactly as it scores the reviews' text, a
rerun continues from the chunks already written, and a teacher whose tokenizer numbers tokens
otherwise than the corpus is refused with nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_module

from bundle import ClassifierModel, load_bundle
from training.config import get_config
from training.corpus import TokenizedCorpus, build_corpus
from training.data import load_imdb
from training.soft_labels import FORMAT, SoftLabelError, SoftLabels, corpus_digest
from training.teacher import bundle_digest, compute_soft_labels


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(the tiny bundles' synthetic data, its corpus with the tiny config's vocab, a corpus of the
    same reviews whose vocab is capped at 64 tokens: other ids for the same words)."""
    sys.path.insert(0, str(REPO / "tests"))
    from corpus import write_corpus

    work = tmp_path_factory.mktemp("teacher")
    data = write_corpus(work / "data")  # the reviews tiny_bundles were trained on
    build_corpus(load_imdb(data), get_config("tiny"), work / "cache").save(work / "corpus")
    capped = get_config("tiny", max_vocab=64)
    build_corpus(load_imdb(data), capped, work / "cache").save(work / "corpus-64")
    return data, work / "corpus", work / "corpus-64"


def test_soft_labels_are_the_bundles_answers_on_the_reviews(
    tiny_bundles: Path, corpora: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data, corpus_dir, _ = corpora
    teacher_dir = tiny_bundles / "imdb-sentiment"
    out = tmp_path / "soft.npz"
    run_module(
        "training", "soft-labels", "--teacher", str(teacher_dir), "--data", str(corpus_dir),
        "--out", str(out),
    )  # fmt: skip
    soft = SoftLabels.load(out)
    corpus = TokenizedCorpus.load(corpus_dir)
    teacher = load_bundle(teacher_dir)
    assert isinstance(teacher, ClassifierModel)
    assert soft.probabilities.dtype == np.float16
    assert soft.probabilities.shape == (len(corpus.offsets) - 1, len(teacher.labels))
    assert soft.meta["format"] == FORMAT and soft.labels == teacher.labels
    assert soft.meta["corpus"]["sha256"] == corpus_digest(corpus)
    assert soft.meta["teacher"]["sha256"] == bundle_digest(teacher_dir)
    assert not out.with_name(out.name + ".parts").exists()
    # what the bundle answers for the review texts, train rows then unsup rows (corpus order)
    reviews = load_imdb(data)
    texts = [*reviews.train["text"], *reviews.unsup["text"]]
    expected = teacher.predict_texts(texts)
    assert np.abs(soft.probabilities.astype(np.float32) - expected).max() < 2e-3
    assert soft.meta["teacher_train_accuracy"] > 0.9
    # the file refuses a corpus it was not computed on
    with pytest.raises(SoftLabelError, match="another corpus"):
        soft.check_corpus(TokenizedCorpus.load(corpora[2]), out)


def test_a_rerun_continues_from_the_chunks_written(
    tiny_bundles: Path, corpora: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, corpus_dir, _ = corpora
    teacher_dir = tiny_bundles / "imdb-sentiment"
    whole = compute_soft_labels(teacher_dir, corpus_dir, tmp_path / "whole.npz", chunk_docs=300)
    # an interrupted run: the parts folder with its first chunk only, marked so its reuse shows
    out = tmp_path / "resumed.npz"
    parts = out.with_name(out.name + ".parts")
    parts.mkdir()
    identity = {
        "corpus_sha256": whole.meta["corpus"]["sha256"],
        "teacher_sha256": whole.meta["teacher"]["sha256"],
        "chunk_docs": 300,
    }
    (parts / "meta.json").write_text(json.dumps(identity))
    marked = np.full((300, 2), 0.25, dtype=np.float32)
    np.save(parts / "part-00000.npy", marked)
    resumed = compute_soft_labels(teacher_dir, corpus_dir, out, chunk_docs=300)
    assert np.all(resumed.probabilities[:300] == np.float16(0.25))  # chunk 0 was not re-scored
    assert np.array_equal(resumed.probabilities[300:], whole.probabilities[300:])
    assert resumed.meta["scored_here"]["reviews"] == len(whole.probabilities) - 300
    assert not parts.exists()
    # parts of another teacher or corpus are refused, not mixed in
    parts.mkdir()
    (parts / "meta.json").write_text(json.dumps({**identity, "teacher_sha256": "0" * 64}))
    with pytest.raises(SoftLabelError, match="another corpus or teacher"):
        compute_soft_labels(teacher_dir, corpus_dir, out, chunk_docs=300)


def test_a_teacher_with_another_vocab_is_refused_and_nothing_is_written(
    tiny_bundles: Path, corpora: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "soft.npz"
    proc = subprocess.run(
        [
            sys.executable, "-m", "training", "soft-labels", "--teacher",
            str(tiny_bundles / "imdb-sentiment"), "--data", str(corpora[2]), "--out", str(out),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "refused, nothing written" in proc.stderr and "vocab" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
