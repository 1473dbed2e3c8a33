"""A distilled student along the lent-GPU path, on the tiny config: the tiny classifier bundle's
soft labels on a pre-tokenized corpus, `TRAIN_STAGE=distill scripts/train-gpu.sh` within its time
limit where neither spaCy nor onnxruntime can be imported (as on a lent GPU machine), then
`rebuild` here from the folder it brought back, `python -m export --run RUN --only student`, and
the student bundle agrees with its teacher on reviews it was never taught. Soft labels of another
corpus are refused with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, run_module

from bundle import ClassifierModel, load_bundle
from training.config import get_config
from training.corpus import TokenizedCorpus, build_corpus
from training.data import load_imdb
from training.distill import default_student_sizes, held_out_rows, taught_rows

SCRIPT_LIMIT_S = 60  # the tiny distill run through scripts/train-gpu.sh, start-up included


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the tiny bundles' synthetic reviews, their corpus with the tiny config's vocab)."""
    sys.path.insert(0, str(REPO / "tests"))
    from corpus import write_corpus

    work = tmp_path_factory.mktemp("distill")
    data = write_corpus(work / "data")
    build_corpus(load_imdb(data), get_config("tiny"), work / "cache").save(work / "corpus")
    return data, work / "corpus"


def _blocked(tmp_path: Path, *modules: str) -> Path:
    """A PYTHONPATH entry under which importing these modules fails (a lent GPU machine's)."""
    root = tmp_path / "blocked"
    for name in modules:
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(f"raise ImportError('no {name} here')\n")
    return root


def test_default_student_is_narrower_and_keeps_the_depth() -> None:
    assert default_student_sizes(get_config("gpu")) == (128, 384, 3)
    assert default_student_sizes(get_config("tiny")) == (16, 32, 2)


def test_held_out_reviews_are_never_taught(synthetic: tuple[Path, Path]) -> None:
    corpus = TokenizedCorpus.load(synthetic[1])
    cfg = get_config("tiny")
    held, taught = held_out_rows(corpus, cfg), taught_rows(corpus, cfg, None)
    n_docs = len(corpus.offsets) - 1
    assert len(held) == round(cfg.valid_pct * corpus.n_train)
    assert np.intersect1d(held, taught).size == 0
    assert sorted([*held, *taught]) == list(range(n_docs))  # everything else is taught
    assert len(taught_rows(corpus, cfg, 50)) == corpus.n_train - len(held) + 50


def test_student_through_the_gpu_script_then_rebuild_and_export(
    tiny_bundles: Path, synthetic: tuple[Path, Path], tmp_path: Path
) -> None:
    data, corpus = synthetic
    teacher_dir = tiny_bundles / "imdb-sentiment"
    soft = tmp_path / "soft-labels.npz"
    run_module(
        "training", "soft-labels", "--teacher", str(teacher_dir), "--data", str(corpus),
        "--out", str(soft),
    )  # fmt: skip
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join([str(_blocked(tmp_path, "spacy", "onnxruntime")), str(REPO)]),
        "TRAIN_STAGE": "distill",
    }
    results = tmp_path / "results"
    started = time.monotonic()
    proc = subprocess.run(
        [
            "bash", "scripts/train-gpu.sh", str(corpus), str(tmp_path / "run"), str(results),
            str(SCRIPT_LIMIT_S), "tiny", "--threads", "1", "--soft-labels", str(soft),
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=SCRIPT_LIMIT_S + 30,
    )  # fmt: skip
    wall_s = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert wall_s < SCRIPT_LIMIT_S, wall_s
    log = (results / "train.log").read_text()
    assert "time limit:" in log and "-> student" in log and "wall time" in log
    brought = sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.is_file())
    assert brought == [
        "config.json", "metrics.json", "train.log", "vocab.json", "weights/student-0.pt",
    ]  # fmt: skip
    student = json.loads((results / "metrics.json").read_text())["student"]
    assert student["sizes"] == {"emb_sz": 16, "n_hid": 32, "n_layers": 2}
    assert student["documents"] == {"train": 480, "unsup": 200, "held_out": 120}
    assert student["schedule"]["probe_ms_per_batch"] > 0
    assert student["held_out"]["agreement_with_teacher"] >= 0.9, student

    run = tmp_path / "rebuilt"
    run.mkdir()
    for path in results.rglob("*"):  # the folder, copied here as docs/training.md says
        if path.is_file():
            (run / path.relative_to(results)).parent.mkdir(parents=True, exist_ok=True)
            (run / path.relative_to(results)).write_bytes(path.read_bytes())
    run_module("training", "rebuild", "--data", str(corpus), "--out", str(run))
    rebuilt = json.loads((run / "metrics.json").read_text())["rebuilt"]
    # fp16 weights in fastai's own learner here: the held-out accuracy the run reported
    held = rebuilt["held_out_accuracy_fp16_weights"]
    assert abs(held - student["held_out"]["student_accuracy"]) <= 0.01
    run_module(
        "export", "--run", str(run), "--only", "student", "--out", str(tmp_path / "bundles"),
        "--data", str(data),
    )  # fmt: skip
    bundle = load_bundle(tmp_path / "bundles" / "imdb-sentiment-fast")
    teacher = load_bundle(teacher_dir)
    assert isinstance(bundle, ClassifierModel) and isinstance(teacher, ClassifierModel)
    assert bundle.labels == teacher.labels
    assert bundle.manifest.architecture["hidden_size"] == 32
    training = bundle.manifest.raw["training"]  # the run's config and figures, in the manifest
    assert training["config"]["name"] == "tiny-student"
    assert training["metrics"]["student"]["held_out"] == student["held_out"]
    assert bundle.manifest.metrics["evaluation"]["held_out"] is True  # the test split
    texts = pd.read_csv(data / "test.csv.gz")["text"].tolist()  # never taught
    answers = bundle.predict_texts(texts).argmax(axis=1)
    agree = np.mean(answers == teacher.predict_texts(texts).argmax(axis=1))
    assert agree >= 0.9, agree


def test_soft_labels_of_another_corpus_are_refused_with_nothing_written(
    tiny_bundles: Path, synthetic: tuple[Path, Path], tmp_path: Path
) -> None:
    """The same reviews tokenized with another vocab cap: other ids, so other soft labels."""
    data, corpus = synthetic
    soft = tmp_path / "soft-labels.npz"
    run_module(
        "training", "soft-labels", "--teacher", str(tiny_bundles / "imdb-sentiment"),
        "--data", str(corpus), "--out", str(soft),
    )  # fmt: skip
    other = tmp_path / "corpus-64"
    build_corpus(load_imdb(data), get_config("tiny", max_vocab=64), tmp_path / "cache").save(other)
    run = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable, "-m", "training", "distill", "--config", "tiny", "--data", str(other),
            "--soft-labels", str(soft), "--out", str(run),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "refused, nothing written" in proc.stderr and "another corpus" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not run.exists()
