"""`python -m training ... --backwards`: the tiny config trained right to left (fastai
`backwards=True` for LM and classifier), exported by `python -m export --run` as a backward
classifier that serves, and ensembled with the forward tiny classifier of the same pipeline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_module
from server_harness import start_server

from bundle import ClassifierModel, load_bundle


@pytest.fixture(scope="module")
def backward_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(run dir, bundles dir, data dir) of the tiny config trained backwards."""
    sys.path.insert(0, str(REPO / "tests"))
    from corpus import write_corpus

    work = tmp_path_factory.mktemp("backwards")
    data = write_corpus(work / "data")
    run_module(
        "training", "all", "--config", "tiny", "--threads", "1", "--backwards",
        "--data", str(data), "--out", "run", cwd=work,
    )  # fmt: skip
    run_module(
        "export", "--run", str(work / "run"), "--out", str(work / "bundles"),
        "--data", str(data), "--only", "classifier", "--version", "tiny-bwd",
    )  # fmt: skip
    return work / "run", work / "bundles", data


def test_run_records_the_direction(backward_run: tuple[Path, Path, Path]) -> None:
    run, bundles, _ = backward_run
    assert json.loads((run / "config.json").read_text())["backwards"] is True
    manifest = json.loads((bundles / "imdb-sentiment" / "manifest.json").read_text())
    assert manifest["direction"] == "backward"
    assert manifest["training"]["config"]["backwards"] is True
    clf = json.loads((run / "metrics.json").read_text())["classifier"]
    assert clf["valid_accuracy"] >= 0.75, clf  # the same bar as the forward tiny run


def test_forward_classifier_on_a_backward_lm_is_refused(
    backward_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    run, _, data = backward_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    proc = subprocess.run(
        [sys.executable, "-m", "training", "classifier", "--config", "tiny", "--threads", "1",
         "--data", str(data), "--out", str(copy)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "trained backwards" in proc.stderr


def test_backward_classifier_serves_and_ensembles_with_the_forward_one(
    backward_run: tuple[Path, Path, Path],
    tiny_run_and_bundles: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    _, bundles, _ = backward_run
    backward = load_bundle(bundles / "imdb-sentiment")
    forward = load_bundle(tiny_run_and_bundles[1] / "imdb-sentiment")
    assert isinstance(backward, ClassifierModel) and backward.backwards
    assert isinstance(forward, ClassifierModel) and not forward.backwards
    # our pipeline: one corpus, one vocabulary, both directions (both named imdb-sentiment)
    models = tmp_path / "models"
    fwd_dir, bwd_dir = tiny_run_and_bundles[1] / "imdb-sentiment", bundles / "imdb-sentiment"
    run_module("export", "ensemble", str(fwd_dir), str(bwd_dir), "--out", str(models),
               "--name", "tiny-fwd-bwd")  # fmt: skip
    shutil.copytree(bundles / "imdb-sentiment", models / "imdb-sentiment")
    server = start_server(models, tmp_path / "logs", DEFAULT_CLASSIFIER="imdb-sentiment")
    try:
        text = "a wonderful film, the best acting I have seen"
        bwd_probs, fwd_probs = backward.predict_texts([text])[0], forward.predict_texts([text])[0]
        for name, expected in (
            ("imdb-sentiment", bwd_probs),
            ("tiny-fwd-bwd", (fwd_probs + bwd_probs) / 2),
        ):
            response = server.post("/classify", json={"text": text, "model": name})
            assert response.status_code == 200, response.text
            got = np.array([response.json()["probabilities"][k] for k in backward.labels])
            assert np.abs(got - expected).max() <= 2e-6, name
    finally:
        server.stop()


@pytest.mark.parametrize("backwards", [False, True])
def test_id_path_batches_equal_fastai_text_path(tmp_path: Path, backwards: bool) -> None:
    """The lent-GPU LM path (pre-numericalized ids) reverses documents as fastai's reverse_text:
    its validation batches equal those of fastai's own text path, in both directions."""
    sys.path.insert(0, str(REPO / "tests"))
    from corpus import write_corpus

    from training.config import get_config
    from training.corpus import TokenizedCorpus, build_corpus
    from training.data import load_imdb
    from training.ulmfit import _lm_learner, _lm_learner_from_ids, _lm_tokens

    data = load_imdb(write_corpus(tmp_path / "data", n_train=60, n_test=10, n_unsup=30))
    cfg = get_config("tiny", backwards=backwards)
    build_corpus(data, cfg, tmp_path / "cache").save(tmp_path / "corpus")
    corpus = TokenizedCorpus.load(tmp_path / "corpus")
    tokens, vocab = _lm_tokens(corpus, cfg, tmp_path / "run")
    text_path = _lm_learner(tokens, vocab, cfg, tmp_path / "run").dls.valid
    id_path = _lm_learner_from_ids(corpus, cfg, tmp_path / "run").dls.valid
    text_x, id_x = text_path.one_batch()[0].cpu(), id_path.one_batch()[0].cpu()
    assert text_x.shape == id_x.shape and bool((text_x == id_x).all())
