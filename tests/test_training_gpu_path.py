"""The path the shipped models took: tokenize once here, train weights-only where spaCy is absent
(a lent GPU machine), fitted to a time budget, then rebuild real fastai learners from the weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, run_module
from fastai.text.all import load_learner

from training.budget import FINISH_S, FINISH_SHARE, LM_SHARE, plan, split_time_left
from training.config import get_config
from training.corpus import TokenizedCorpus, build_corpus
from training.data import load_imdb
from training.run_files import missing_for_rebuild
from training.tokens import tokenize_texts
from training.weights import load_fp16_chunks, save_fp16_chunks


def test_fp16_chunks_write_tied_weights_once_and_split_large_tensors(tmp_path: Path) -> None:
    emb = torch.randn(1000, 16)
    state = {
        "encoder.weight": emb,
        "decoder.weight": emb,
        "big": torch.randn(300, 100),
        "steps": torch.tensor(7),
    }
    paths = save_fp16_chunks(state, tmp_path, "m", max_bytes=20_000)
    assert all(p.stat().st_size < 40_000 for p in paths)  # the cap plus pickle overhead
    fp16_bytes = 2 * (emb.numel() + 300 * 100)  # the tied tensor once, every float as fp16
    assert sum(p.stat().st_size for p in paths) < fp16_bytes + 2_500 * len(
        paths
    )  # + torch.save's framing
    back = load_fp16_chunks(tmp_path, "m")
    assert set(back) == set(state)
    for name, t in state.items():
        assert back[name].dtype == (torch.float32 if t.is_floating_point() else t.dtype)
        assert torch.allclose(back[name].float(), t.float(), rtol=1e-3, atol=1e-3), name
    assert back["encoder.weight"] is back["decoder.weight"]
    with pytest.raises(FileNotFoundError, match="no other-"):
        load_fp16_chunks(tmp_path, "other")


def test_budget_plan_fills_the_seconds_and_never_exceeds_them() -> None:
    # 10 ms a batch, 1000 batches an epoch, 100 valid batches: ~10.4 s an epoch
    assert plan(1000.0, 0.01, 1000, 100, max_epochs=4) == (
        4,
        1.0,
    )  # time to spare: capped by max_epochs
    epochs, fraction = plan(25.0, 0.01, 1000, 100, max_epochs=10)
    assert epochs == 3 and 0.5 < fraction < 1.0
    planned = epochs * (fraction * 1000 * 0.01 + 100 * 0.01 * 0.4)
    assert planned <= 25.0
    assert plan(0.5, 0.01, 1000, 100, max_epochs=10) == (1, 0.02)  # at least a sliver of an epoch


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from corpus import write_corpus

    return write_corpus(
        tmp_path_factory.mktemp("gpu-path") / "data", n_train=200, n_test=20, n_unsup=100
    )


def test_corpus_gives_fastai_the_same_tokens_and_vocab_as_the_text_path(
    synthetic: Path, tmp_path: Path
) -> None:
    from training.ulmfit import _clf_tokens, _lm_tokens

    cfg = get_config("tiny", clf_docs=50)
    data = load_imdb(synthetic)
    corpus = build_corpus(data, cfg, tmp_path / "cache")
    corpus.save(tmp_path / "corpus")
    loaded = TokenizedCorpus.load(tmp_path / "corpus")
    text_tokens, text_vocab = _lm_tokens(data, cfg, tmp_path / "text-run")
    corpus_tokens, corpus_vocab = _lm_tokens(loaded, cfg, tmp_path / "corpus-run")
    assert corpus_vocab == text_vocab
    known = set(text_vocab)
    assert corpus_tokens == [[t if t in known else "xxunk" for t in doc] for doc in text_tokens]
    text_clf, text_labels = _clf_tokens(data, cfg, tmp_path / "text-run")
    corpus_clf, corpus_labels = _clf_tokens(loaded, cfg, tmp_path / "corpus-run")
    assert corpus_labels == text_labels and len(corpus_clf) == 50
    assert corpus_clf == [[t if t in known else "xxunk" for t in doc] for doc in text_clf]
    assert loaded.ids.dtype == np.uint16
    with pytest.raises(ValueError, match="LM documents differ"):
        loaded.check_matches(get_config("tiny", lm_docs=10))


GPU_SCRIPT_LIMIT_S = 50  # the tiny run through scripts/train-gpu.sh, start-up included


def test_gpu_script_within_its_time_limit_then_rebuild_gives_working_learners(
    synthetic: Path, tmp_path: Path
) -> None:
    """The documented GPU recipe end to end on the CPU: tokenize here, scripts/train-gpu.sh with a
    wall-clock limit where spaCy is absent (as on a lent GPU machine), then `rebuild` from exactly
    the folder the script brought back."""
    corpus = tmp_path / "corpus"  # what `python -m training tokenize` writes, made in process
    build_corpus(load_imdb(synthetic), get_config("tiny"), tmp_path / "cache").save(corpus)
    no_spacy = tmp_path / "no-spacy" / "spacy"
    no_spacy.mkdir(parents=True)
    (no_spacy / "__init__.py").write_text("raise ImportError('no spaCy on a lent GPU machine')\n")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join([str(no_spacy.parent), str(REPO)]),
    }
    results = tmp_path / "results"
    started = time.monotonic()
    proc = subprocess.run(
        [
            "bash",
            "scripts/train-gpu.sh",
            str(corpus),
            str(tmp_path / "run"),
            str(results),
            str(GPU_SCRIPT_LIMIT_S),
            "tiny",
            "--threads",
            "1",
            "--lm-epochs",
            "3",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=GPU_SCRIPT_LIMIT_S + 30,
    )
    wall_s = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert wall_s < GPU_SCRIPT_LIMIT_S, wall_s
    log = (results / "train.log").read_text()
    assert "time limit:" in log and "wall time" in log
    brought = sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.is_file())
    assert brought == [
        "config.json",
        "metrics.json",
        "train.log",
        "vocab.json",
        "weights/classifier-0.pt",
        "weights/lm-0.pt",
    ]
    metrics = json.loads((results / "metrics.json").read_text())
    schedule = metrics["lm"]["schedule"]
    assert (
        schedule["epochs"] >= 1
        and 0 < schedule["epoch_fraction"] <= 1
        and schedule["probe_ms_per_batch"] > 0
    )
    assert metrics["lm"]["train_loss_end"] < metrics["lm"]["train_loss_start"]

    # a folder missing a file is refused at once, naming every missing file, writing nothing
    broken = tmp_path / "broken"
    shutil.copytree(results, broken)
    (broken / "weights" / "classifier-0.pt").unlink()
    (broken / "vocab.json").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "training", "rebuild", "--data", str(corpus), "--out", str(broken)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert str(broken / "vocab.json") in proc.stderr
    assert str(broken / "weights" / "classifier-") in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (broken / "lm.pkl").exists() and not (broken / "classifier.pkl").exists()

    run = tmp_path / "rebuilt"
    shutil.copytree(results, run)  # what docs/training.md says to do with the folder
    run_module("training", "rebuild", "--config", "tiny", "--data", str(corpus), "--out", str(run))
    rebuilt = json.loads((run / "metrics.json").read_text())["rebuilt"]
    # fp16 weights, fp32 here: the validation accuracy the run reported comes back
    assert (
        abs(
            rebuilt["classifier_valid_accuracy_fp16_weights"]
            - metrics["classifier"]["valid_accuracy"]
        )
        <= 0.01
    )
    with warnings.catch_warnings():  # fastai warns that pickles can run code: these are ours
        warnings.filterwarnings("ignore", message=".*insecure pickle", category=UserWarning)
        classifier = load_learner(run / "classifier.pkl")
        lm = load_learner(run / "lm.pkl")
    with classifier.no_bar(), lm.no_bar():
        label = classifier.predict("A truly wonderful film, the acting was great.")[0]
        continuation = lm.predict("The movie was", n_words=5)
    assert label in ("neg", "pos")
    assert continuation.lower().startswith("the movie was") and len(continuation.split()) > 3


def test_time_limit_split_keeps_a_share_to_finish() -> None:
    lm_s, clf_s = split_time_left(560.0)
    assert lm_s + clf_s == pytest.approx((560.0 - FINISH_S) * (1 - FINISH_SHARE))
    assert lm_s == pytest.approx((lm_s + clf_s) * LM_SHARE)
    assert split_time_left(-5.0) == (0.0, 0.0)


def test_chunked_tokenizer_gives_fastai_tokenize_df_tokens(synthetic: Path) -> None:
    """The progress-reporting tokenizer is fastai's own: same tokens as tokenize_df."""
    from fastai.text.all import tokenize_df

    texts = load_imdb(synthetic).train["text"].tolist()[:40]
    df, _ = tokenize_df(pd.DataFrame({"text": texts}), text_cols="text", n_workers=1)
    expected = [list(t) for t in df["text"]]
    assert tokenize_texts(texts, n_workers=1) == expected
    # small chunks over two processes: they finish out of order, the result keeps the input's
    assert tokenize_texts(texts, n_workers=2, chunk_texts=3) == expected


def test_rebuild_check_names_a_weight_chunk_lost_in_transfer(tmp_path: Path) -> None:
    """metrics.json lists the chunks the run wrote: a missing second chunk is named, though
    weights/lm-*.pt still matches the first."""
    run, corpus = tmp_path / "run", tmp_path / "corpus"
    (run / "weights").mkdir(parents=True)
    corpus.mkdir()
    for name in ("corpus.npz", "corpus.json"):
        (corpus / name).write_bytes(b"")
    for name in ("config.json", "vocab.json", "weights/lm-0.pt", "weights/classifier-0.pt"):
        (run / name).write_bytes(b"")
    metrics = {
        "lm": {"weight_files": ["weights/lm-0.pt", "weights/lm-1.pt"]},
        "classifier": {"weight_files": ["weights/classifier-0.pt"]},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert missing_for_rebuild(run, corpus) == [str(run / "weights" / "lm-1.pt")]
    (run / "weights" / "lm-1.pt").write_bytes(b"")
    assert missing_for_rebuild(run, corpus) == []
