"""The short-text evaluation: the set-building rule, and one end-to-end run of
`python -m benchmarks short-texts` on the synthetic corpus with the tiny bundle (real fastai
training, real export, real onnxruntime; the baseline is a real scikit-learn fit)."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest
from conftest import run_module
from corpus import write_corpus
from server_harness import bundle_copy
from sklearn.metrics import roc_auc_score

from benchmarks.short_texts import SetRule, build_set, read_labelled, split_sentences
from bundle import ClassifierModel, load_bundle

REVIEWS = [
    # first: 6 words, kept; last: 3 words, too short
    ("This film is a real gem. I saw it twice.<br /><br />Truly loved it.", "pos"),
    # one sentence only: not a crop of a longer review, skipped
    ("Dreadful from the opening credits to the very last scene", "neg"),
    # first: 30 words, too long; last: 7 words, kept; the <br /> ends a sentence
    (
        "The first act drags on and on and on while the lead mumbles his lines and the camera "
        "wanders about the room looking for something anything to look at for far too long. "
        "Then it ends.<br />Do not waste your money on this.",
        "neg",
    ),
    # both kept (5 words each, the bounds are inclusive)
    ('"Best movie of the year!" That is what I said.', "pos"),
]


def test_sentences_split_at_end_marks_and_html_breaks() -> None:
    assert split_sentences("It was bad.<br /><br />Really bad! Why? (No idea.) e.g. fine") == [
        "It was bad.",
        "Really bad!",
        "Why?",
        "(No idea.) e.g. fine",
    ]


def test_set_takes_first_and_last_sentences_within_bounds_labelled_by_review() -> None:
    items = build_set(REVIEWS, SetRule())
    got = [(s.review, s.position, s.label, s.text) for s in items]
    assert got == [
        (0, "first", "pos", "This film is a real gem."),
        (2, "last", "neg", "Do not waste your money on this."),
        (3, "first", "pos", '"Best movie of the year!"'),
        (3, "last", "pos", "That is what I said."),
    ]
    narrow = build_set(REVIEWS, SetRule(min_words=6, max_words=6))
    assert [(s.review, s.position) for s in narrow] == [(0, "first")]


def test_set_is_deterministic_balanced_and_bounded(tmp_path: Path) -> None:
    data = write_corpus(tmp_path, n_train=10, n_test=400, n_unsup=0, seed=3)
    with gzip.open(data / "test.csv.gz", "rt", newline="") as f:
        reviews = [(r["text"], r["label"]) for r in csv.DictReader(f)]
    rule = SetRule(min_words=5, max_words=12, per_group=25, seed=7)
    first = build_set(reviews, rule)
    assert first == build_set(reviews, rule)
    assert first != build_set(reviews, SetRule(min_words=5, max_words=12, per_group=25, seed=8))
    groups: dict[tuple[str, str], int] = {}
    for s in first:
        assert 5 <= len(s.text.split()) <= 12
        assert s.label == reviews[s.review][1]
        assert s.text in reviews[s.review][0].replace("<br />", " ")
        groups[(s.position, s.label)] = groups.get((s.position, s.label), 0) + 1
    assert groups == {(p, label): 25 for p in ("first", "last") for label in ("neg", "pos")}
    assert [s.review for s in first] == sorted(s.review for s in first)


def test_cli_scores_the_bundle_and_the_baseline_end_to_end(
    tiny_bundles: Path, tmp_path: Path
) -> None:
    data = write_corpus(tmp_path / "data", n_train=600, n_test=200, n_unsup=0, seed=5)
    out = tmp_path / "short.json"
    bundle_dir = tiny_bundles / "imdb-sentiment"
    # the same model with a short-input calibration that leans hard to "neg": scored as served
    leaning = bundle_copy(
        bundle_dir,
        tmp_path / "calibrated",
        version="tiny-leaning",
        short_input={"max_tokens": 64, "scale": 0.1, "log_bias": [0.0, -10.0]},
    )
    run_module(
        "benchmarks",
        "short-texts",
        "--bundle",
        str(bundle_dir),
        "--bundle",
        str(leaning),
        "--imdb",
        str(data),
        "--per-group",
        "30",
        "--out",
        str(out),
    )
    results = json.loads(out.read_text())
    assert results["set"]["n"] == 120
    assert results["set"]["counts"] == {
        f"{p}/{label}": 30 for p in ("first", "last") for label in ("neg", "pos")
    }
    baseline = results["baseline"]
    assert baseline["full_review_test_docs"] == 200
    # the synthetic labels follow sentiment words, which a bag of bigrams separates
    assert baseline["full_review_test_accuracy"] >= 0.95
    assert baseline["c"] in baseline["c_candidates"]
    model, calibrated = results["models"]
    assert model["model_id"] == "imdb-sentiment@tiny-test"
    assert "without_short_input" not in model

    # the reported accuracy is the bundle's own answers on the same sentences
    items = build_set(read_labelled(data / "test.csv.gz"), SetRule(per_group=30))
    clf = load_bundle(bundle_dir)
    assert isinstance(clf, ClassifierModel)
    probabilities = clf.predict_texts([s.text for s in items])
    answers = probabilities.argmax(axis=1)
    hits = sum(clf.labels[int(a)] == s.label for a, s in zip(answers, items, strict=True))
    assert model["accuracy"] == round(hits / len(items), 5)
    # AUC of the "pos" probability; one padded batch here vs length-sorted batches there can
    # reorder near-ties (~1e-7 apart), each swap moving the AUC by 1 / (60 * 60)
    truth = [s.label == "pos" for s in items]
    auc = roc_auc_score(truth, probabilities[:, clf.labels.index("pos")])
    assert model["auc"] == pytest.approx(auc, abs=2e-3)
    assert 0.0 <= baseline["auc"] <= 1.0
    baseline_hits = round(baseline["accuracy"] * len(items))
    assert model["only_model_right"] - model["only_baseline_right"] == hits - baseline_hits

    # the calibrated copy: its figures are the calibration's answers, the raw ones beside them
    calibration = load_bundle(leaning).manifest.short_input
    assert calibration is not None
    lengths = [len(clf.tokenizer.encode(s.text)) for s in items]
    served = calibration.apply(probabilities, lengths)
    served_hits = sum(
        clf.labels[int(a)] == s.label for a, s in zip(served.argmax(axis=1), items, strict=True)
    )
    assert calibrated["accuracy"] == round(served_hits / len(items), 5)
    assert (served.argmax(axis=1) != answers).any()  # so strong a shift must move answers
    assert calibrated["without_short_input"]["accuracy"] == model["accuracy"]
    assert calibrated["short_input"] == calibration.section()
