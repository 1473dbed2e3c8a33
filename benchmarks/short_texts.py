"""Short texts: a classifier bundle vs a TF-IDF + logistic-regression baseline on single sentences.

`python -m benchmarks short-texts --bundle models/imdb-sentiment [--bundle OTHER ...]`

A proxy for short inputs, stated as such: each sentence is cut from an IMDB *test* review and
takes that review's label, so a neutral or contrary sentence inside a positive review counts as
positive and no model can reach 100 %. Both sides are judged on the same sentences; neither saw
the test split in training. The rule picks sentences without asking any model (see `SetRule`):
the first and the last sentence of each review of two sentences or more, kept when 5-25 words
long, then a seeded sample balanced over (position, label).

The baseline is fitted here on the same IMDB train split the classifier was trained on; its
full-review test accuracy is reported as a sanity check. Bundles are run through `bundle/`, the
code the server runs, on one thread, and scored as served: with the bundle's short-input
calibration if it has one (bundle/calibration.py), reported beside the figures without it.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.inputs import default_imdb_dir
from export.progress import progress
from export.short_inputs import (
    POSITIONS,
    SetRule,
    ShortText,
    build_set,
    plain,
    raw_probabilities,
    split_sentences,
)

__all__ = ["SetRule", "ShortText", "build_set", "read_labelled", "split_sentences"]

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "short_texts.json"
BASELINE_C = (1.0, 4.0, 16.0)  # inverse regularization, chosen on 10 % of train


@dataclass
class Scores:
    """Accuracy over the set and per sentence position; with the probability of the positive
    (last) label, also ROC AUC and the median probability: whether errors are ranking or bias."""

    accuracy: float
    by_position: dict[str, float]
    correct: list[bool] = field(repr=False)
    auc: float | None = None
    median_positive_probability: float | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"accuracy": round(self.accuracy, 5), "by_position": self.by_position}
        if self.auc is not None:
            out["auc"] = round(self.auc, 5)
            out["median_positive_probability"] = self.median_positive_probability
        return out


def read_labelled(path: Path) -> list[tuple[str, str]]:
    """(text, label) rows of an IMDB split in the CSV layout (`text,label`, gzip)."""
    if not path.is_file():
        raise FileNotFoundError(f"IMDB split not found at {path} (set IMDB_DIR or --imdb)")
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        return [(row["text"], row["label"]) for row in csv.DictReader(handle)]


def score(
    items: Sequence[ShortText],
    predicted: Sequence[str],
    positive_probability: Sequence[float] | None = None,
) -> Scores:
    correct = [p == s.label for s, p in zip(items, predicted, strict=True)]
    by_position = {}
    for position in POSITIONS:
        hits = [c for s, c in zip(items, correct, strict=True) if s.position == position]
        if hits:
            by_position[position] = round(sum(hits) / len(hits), 5)
    scores = Scores(sum(correct) / max(1, len(correct)), by_position, correct)
    labels = sorted({s.label for s in items})
    if positive_probability is not None and len(labels) == 2:
        from sklearn.metrics import roc_auc_score

        truth = [s.label == labels[1] for s in items]
        scores.auc = float(roc_auc_score(truth, positive_probability))
        scores.median_positive_probability = round(float(np.median(positive_probability)), 4)
    return scores


class Baseline:
    """TF-IDF over word unigrams and bigrams + logistic regression, C picked on 10 % of train."""

    def __init__(self, train: Sequence[tuple[str, str]], seed: int = 0) -> None:
        from sklearn.model_selection import train_test_split

        started = time.perf_counter()
        texts = [plain(t) for t, _ in train]
        labels = [label for _, label in train]
        fit_x, valid_x, fit_y, valid_y = train_test_split(
            texts, labels, test_size=0.1, random_state=seed, stratify=labels
        )
        self.valid_accuracy: dict[str, float] = {}
        for c in progress(BASELINE_C, "baseline: choosing C", unit="fit"):
            model = self._fit(fit_x, fit_y, c)
            self.valid_accuracy[str(c)] = round(float(model.score(valid_x, valid_y)), 5)
        self.c = max(BASELINE_C, key=lambda c: self.valid_accuracy[str(c)])
        self.model = self._fit(texts, labels, self.c)
        self.fit_seconds = round(time.perf_counter() - started, 1)
        self.train_docs = len(texts)

    @staticmethod
    def _fit(texts: Sequence[str], labels: Sequence[str], c: float) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        model = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
            LogisticRegression(C=c, solver="liblinear"),
        )
        return model.fit(texts, labels)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [str(p) for p in self.model.predict([plain(t) for t in texts])]

    def probability(self, texts: Sequence[str], label: str) -> list[float]:
        column = list(self.model.classes_).index(label)
        return [float(p) for p in self.model.predict_proba([plain(t) for t in texts])[:, column]]

    def describe(self) -> dict[str, Any]:
        return {
            "model": "TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True) + "
            "LogisticRegression(solver='liblinear')",
            "c_candidates": list(BASELINE_C),
            "valid_accuracy_by_c": self.valid_accuracy,
            "c": self.c,
            "train_docs": self.train_docs,
            "fit_seconds": self.fit_seconds,
        }


def predict_bundle(
    bundle_dir: Path, texts: Sequence[str]
) -> tuple[list[str], np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Labels and probabilities from a classify bundle via bundle.load_bundle (one thread, as
    one server worker), as served: with the bundle's short-input calibration applied as
    server/inference/classify.py applies it; then the raw probabilities when it has one."""
    from bundle import ClassifierModel, load_bundle

    model = load_bundle(bundle_dir, threads=1)
    if not isinstance(model, ClassifierModel):
        raise SystemExit(f"{bundle_dir} is not a classify bundle")
    started = time.perf_counter()
    ids = [model.tokenizer.encode(t) for t in texts]
    raw = raw_probabilities(model, ids)
    calibration = model.manifest.short_input
    served = raw if calibration is None else calibration.apply(raw, [len(s) for s in ids])
    labels = [model.labels[int(best)] for best in served.argmax(axis=1)]
    info = {
        "bundle": str(bundle_dir),
        "model_id": model.manifest.model_id,
        "model_file": model.manifest.model_path.name,
        "labels": model.labels,
        "short_input": None if calibration is None else calibration.section(),
        "seconds": round(time.perf_counter() - started, 1),
        "tokens_mean": round(sum(map(len, ids)) / max(1, len(ids)), 1),
    }
    return labels, served, None if calibration is None else raw, info


def run(imdb_dir: Path, bundles: Sequence[Path], rule: SetRule) -> dict[str, Any]:
    started = time.perf_counter()
    test = read_labelled(imdb_dir / "test.csv.gz")
    train = read_labelled(imdb_dir / "train.csv.gz")
    items = build_set(test, rule)
    if not items:
        raise SystemExit("no sentence met the rule")
    texts = [s.text for s in items]
    words = [len(t.split()) for t in texts]
    counts: dict[str, int] = {}
    for s in items:
        key = f"{s.position}/{s.label}"
        counts[key] = counts.get(key, 0) + 1

    baseline = Baseline(train, seed=rule.seed)
    positive = sorted({s.label for s in items})[-1]
    baseline_short = score(items, baseline.predict(texts), baseline.probability(texts, positive))
    full_predicted = baseline.predict([t for t, _ in test])
    full_accuracy = sum(p == label for p, (_, label) in zip(full_predicted, test, strict=True))

    models = []
    for bundle_dir in bundles:
        predicted, served, raw, info = predict_bundle(bundle_dir, texts)
        column = info["labels"].index(positive)
        scores = score(items, predicted, served[:, column].tolist())
        pairs = list(zip(scores.correct, baseline_short.correct, strict=True))
        models.append(
            {
                **info,
                **scores.summary(),
                "minus_baseline_pt": round(100 * (scores.accuracy - baseline_short.accuracy), 2),
                "only_model_right": sum(m and not b for m, b in pairs),
                "only_baseline_right": sum(b and not m for m, b in pairs),
            }
        )
        if raw is not None:  # the same model without its calibration, for comparison
            uncalibrated = [info["labels"][int(i)] for i in raw.argmax(axis=1)]
            without = score(items, uncalibrated, raw[:, column].tolist())
            models[-1]["without_short_input"] = {
                **without.summary(),
                "minus_baseline_pt": round(100 * (without.accuracy - baseline_short.accuracy), 2),
            }
    return {
        "what": "single sentences of IMDB test reviews, labelled by their review (a proxy)",
        "source": str(imdb_dir / "test.csv.gz"),
        "rule": asdict(rule),
        "set": {
            "n": len(items),
            "reviews_used": len({s.review for s in items}),
            "test_reviews": len(test),
            "counts": counts,
            "words_mean": round(sum(words) / len(words), 1),
            "examples": [asdict(s) for s in items[:: max(1, len(items) // 6)][:6]],
        },
        "baseline": {
            **baseline.describe(),
            **baseline_short.summary(),
            "full_review_test_accuracy": round(full_accuracy / len(test), 5),
            "full_review_test_docs": len(test),
        },
        "models": models,
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "seconds": round(time.perf_counter() - started, 1),
    }


def add_parser(sub: Any) -> None:
    """The `short-texts` subcommand of `python -m benchmarks`."""
    p = sub.add_parser("short-texts", help="short-text accuracy: bundle(s) vs TF-IDF + LR")
    p.add_argument(
        "--bundle",
        dest="bundles",
        type=Path,
        action="append",
        required=True,
        help="a classify bundle directory (repeat to compare several)",
    )
    p.add_argument(
        "--imdb",
        dest="imdb_dir",
        type=Path,
        default=None,
        help=f"IMDB CSV dir (default $IMDB_DIR or {default_imdb_dir()})",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_JSON, help=f"JSON (default {DEFAULT_JSON})")
    p.add_argument("--per-group", type=int, default=SetRule.per_group)
    p.add_argument("--seed", type=int, default=SetRule.seed)


def main(args: argparse.Namespace) -> int:
    rule = SetRule(per_group=args.per_group, seed=args.seed)
    results = run(args.imdb_dir or default_imdb_dir(), args.bundles, rule)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    base = results["baseline"]
    print(
        f"n={results['set']['n']}  baseline {base['accuracy']:.2%} "
        f"(full reviews {base['full_review_test_accuracy']:.2%})",
        flush=True,
    )
    for m in results["models"]:
        line = f"{m['model_id']}: {m['accuracy']:.2%} ({m['minus_baseline_pt']:+.2f} pt)"
        if "without_short_input" in m:
            line += (
                f"; without its short-input calibration {m['without_short_input']['accuracy']:.2%}"
            )
        print(line, flush=True)
    print(f"wrote {args.out}", flush=True)
    return 0
