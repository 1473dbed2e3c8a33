"""`python -m training distill`: a student half as wide as the tiny classifier, taught by the
tiny classifier's bundle (its probabilities on train + unsup texts), exported by
`python -m export` like any learner, and agreeing with its teacher on held-out texts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from conftest import REPO, run_module

from bundle import ClassifierModel, load_bundle


def test_student_learns_the_teachers_answers(
    tiny_run_and_bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    import pandas as pd
    from corpus import write_corpus

    data = write_corpus(tmp_path / "data")
    teacher_dir = tiny_run_and_bundles[1] / "imdb-sentiment"
    run_module(
        "training", "distill", "--config", "tiny", "--threads", "1", "--teacher",
        str(teacher_dir), "--data", str(data), "--out", str(tmp_path / "run"),
    )  # fmt: skip
    metrics = json.loads((tmp_path / "run" / "distill.json").read_text())
    assert metrics["student"] == {"emb_sz": 16, "n_hid": 32, "n_layers": 2}  # tiny's halves
    assert metrics["documents"] == {"train": 600, "unsup": 200}
    assert metrics["valid_agreement_with_teacher"] >= 0.9, metrics
    run_module(
        "export", str(tmp_path / "run" / "student.pkl"), "--out", str(tmp_path / "bundles"),
        "--name", "tiny-student",
    )  # fmt: skip
    student = load_bundle(tmp_path / "bundles" / "tiny-student")
    teacher = load_bundle(teacher_dir)
    assert isinstance(student, ClassifierModel) and isinstance(teacher, ClassifierModel)
    assert student.labels == teacher.labels
    assert student.manifest.architecture["hidden_size"] == 32
    texts = pd.read_csv(data / "test.csv.gz")["text"].tolist()  # never taught
    agree = np.mean(
        student.predict_texts(texts).argmax(axis=1) == teacher.predict_texts(texts).argmax(axis=1)
    )
    assert agree >= 0.9, agree
