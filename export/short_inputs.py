"""Short inputs: the short-text recipe, and the calibration fitted on it (bundle/calibration.py).

`python -m export calibrate BUNDLE --out DIR --version V [--data IMDB_DIR | --train-csv CSV]`
copies a classify bundle (or ensemble) into DIR/NAME as a NEW version whose manifest has a
"short_input" section, every file re-hashed; `python -m export ... --calibrate-short` does the
same as the last step of an export, before the bundle is published.

The fitting set comes from TRAINING texts only, by the rule the short-text benchmark applies to
the test split (`SetRule`: first and last sentence of each review of two or more, 5-25 words,
balanced over position and label, seeded). The fit minimizes the log-loss of
`softmax(scale * log p + log_bias)` over it (convex; Newton steps), so the argmax moves only as
far as the training data says the model leans. Inputs longer than `max_tokens` are untouched:
on sentence crops of train reviews the best shift is about the short sentences' one up to 64
tokens and fades to none past ~128 (docs/training.md). Exit status as `python -m export`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bundle import BundleError, ClassifierModel, load_bundle
from bundle.calibration import SHORT_INPUT_KEY, ShortInputCalibration
from bundle.manifest import MANIFEST_NAME, write_manifest

from .eval_data import EvalData, EvalDataError, read_eval_csv
from .progress import progress
from .staging import staged_bundle

REFUSED = 2
DEFAULT_MAX_TOKENS = 64  # measured, see the module doc
MIN_SENTENCES = 100  # fewer cannot pin a bias down
BATCH = 64
POSITIONS = ("first", "last")
BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
# A sentence ends at . ! or ? (and a closing quote or bracket) before space and a capital.
SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')]))\s+(?=[\"'(]?[A-Z])")
DATA_ENV = "IMDB_DIR"
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "imdb"


class CalibrationRefused(Exception):
    """A bundle or data the calibration cannot use (one line)."""


@dataclass(frozen=True)
class SetRule:
    """How a short-text set is drawn; every field is recorded with the results."""

    min_words: int = 5
    max_words: int = 25
    per_group: int = 1000  # sentences per (position, label): 4,000 for two labels
    seed: int = 0


@dataclass(frozen=True)
class ShortText:
    text: str
    label: str
    review: int  # row of the review in its split
    position: str  # "first" or "last" sentence of that review


def plain(text: str) -> str:
    """HTML line breaks to spaces, runs of whitespace to one space."""
    return " ".join(BREAK.sub(" ", text).split())


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(plain(text)) if s.strip()]


def build_set(reviews: Sequence[tuple[str, str]], rule: SetRule) -> list[ShortText]:
    """The first and last sentence of every review of >= 2 sentences, kept at min-max words;
    then at most `per_group` of each (position, label), drawn with `seed`; in review order."""
    groups: dict[tuple[str, str], list[ShortText]] = {}
    for row, (text, label) in enumerate(reviews):
        sentences = split_sentences(text)
        if len(sentences) < 2:
            continue
        for position, sentence in zip(POSITIONS, (sentences[0], sentences[-1]), strict=True):
            if rule.min_words <= len(sentence.split()) <= rule.max_words:
                groups.setdefault((position, label), []).append(
                    ShortText(sentence, label, row, position)
                )
    rng = random.Random(rule.seed)
    picked: list[ShortText] = []
    for key in sorted(groups):
        candidates = groups[key]
        picked.extend(rng.sample(candidates, min(rule.per_group, len(candidates))))
    return sorted(picked, key=lambda s: (s.review, POSITIONS.index(s.position)))


def raw_probabilities(model: ClassifierModel, ids: Sequence[Sequence[int]]) -> np.ndarray:
    """The model's own probabilities (no calibration), in batches of similar lengths."""
    out = np.zeros((len(ids), len(model.labels)), dtype=np.float32)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    starts = range(0, len(order), BATCH)
    for start in progress(starts, f"{model.manifest.model_id}", unit="batch"):
        rows = order[start : start + BATCH]
        out[rows] = model.predict_ids([ids[i] for i in rows])
    return out


def log_loss(probabilities: np.ndarray, targets: np.ndarray) -> float:
    tiny = np.finfo(np.float64).tiny
    picked = probabilities[np.arange(len(targets)), targets].astype(np.float64)
    return float(-np.mean(np.log(np.maximum(picked, tiny))))


def fit_calibration(
    probabilities: np.ndarray, targets: np.ndarray, max_tokens: int, steps: int = 100
) -> ShortInputCalibration:
    """Scale and per-label bias (the first label's fixed at 0) minimizing the log-loss of
    softmax(scale * log p + bias) against `targets` (label indices): damped Newton steps."""
    n, k = probabilities.shape
    log_p = np.log(np.maximum(probabilities.astype(np.float64), np.finfo(np.float64).tiny))
    onehot = np.eye(k)[targets]
    # d(logits)/d(params) per row: column 0 the scale, columns 1.. the biases of labels 1..
    jac = np.zeros((n, k, k))
    jac[:, :, 0] = log_p
    jac[:, 1:, 1:] = np.eye(k)[1:, 1:]
    params = np.zeros(k)
    params[0] = 1.0

    def loss_and_q(p: np.ndarray) -> tuple[float, np.ndarray]:
        logits = p[0] * log_p + np.concatenate([[0.0], p[1:]])
        logits -= logits.max(axis=1, keepdims=True)
        log_q = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return float(-np.mean((onehot * log_q).sum(axis=1))), np.exp(log_q)

    loss, q = loss_and_q(params)
    for _ in range(steps):
        grad = np.einsum("nk,nkp->p", q - onehot, jac) / n
        weights = np.einsum("nk,kl->nkl", q, np.eye(k)) - np.einsum("nk,nl->nkl", q, q)
        hessian = np.einsum("nkp,nkl,nlr->pr", jac, weights, jac) / n + 1e-9 * np.eye(k)
        step = np.linalg.solve(hessian, grad)
        size = 1.0
        while size > 1e-6:
            trial = params - size * step
            trial_loss, trial_q = loss_and_q(trial)
            if trial_loss <= loss:
                break
            size /= 2
        else:
            break
        params, loss, q = trial, trial_loss, trial_q
        if np.abs(size * step).max() < 1e-10:
            break
    bias = [0.0, *params[1:].tolist()]
    fitted = {"max_tokens": max_tokens, "scale": float(params[0]), "log_bias": bias}
    try:
        return ShortInputCalibration.parse(fitted, [""] * k, multi_label=False)
    except ValueError as e:
        raise CalibrationRefused(f"the fit left the allowed range: {e}") from None


def _accuracy(probabilities: np.ndarray, targets: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == targets).mean())


def fit_on_training_texts(
    model: ClassifierModel,
    train: Sequence[tuple[str, str]],
    description: str,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    rule: SetRule = SetRule(),
) -> tuple[ShortInputCalibration, dict[str, Any]]:
    """The calibration and the manifest's record of its fit (data, rule, figures on the set)."""
    if model.multi_label:
        raise CalibrationRefused("short-input calibration is for single-label classifiers only")
    unknown = sorted({label for _, label in train} - set(model.labels))
    if unknown:
        raise CalibrationRefused(f"training labels {unknown} are not the model's {model.labels}")
    items = build_set(train, rule)
    ids = [model.tokenizer.encode(s.text) for s in progress(items, "tokenize", unit="texts")]
    kept = [i for i, seq in enumerate(ids) if len(seq) <= max_tokens]
    if len(kept) < MIN_SENTENCES:
        raise CalibrationRefused(
            f"{len(kept)} short sentences of at most {max_tokens} tokens in the training texts "
            f"(at least {MIN_SENTENCES} needed)"
        )
    probabilities = raw_probabilities(model, [ids[i] for i in kept])
    targets = np.array([model.labels.index(items[i].label) for i in kept])
    calibration = fit_calibration(probabilities, targets, max_tokens)
    after = calibration.transform(probabilities)
    counts: dict[str, int] = {}
    for i in kept:
        key = f"{items[i].position}/{items[i].label}"
        counts[key] = counts.get(key, 0) + 1
    record = {
        "data": f"{description}: first/last sentences, never test data",
        "rule": asdict(rule),
        "sentences": len(kept),
        "sentences_over_max_tokens": len(items) - len(kept),
        "counts": counts,
        "tokens_mean": round(float(np.mean([len(ids[i]) for i in kept])), 1),
        "objective": "log-loss of softmax(scale * log p + log_bias), Newton steps",
        "accuracy_before": round(_accuracy(probabilities, targets), 5),
        "accuracy_after": round(_accuracy(after, targets), 5),
        "log_loss_before": round(log_loss(probabilities, targets), 5),
        "log_loss_after": round(log_loss(after, targets), 5),
        "predicted_share_before": _shares(probabilities, model.labels),
        "predicted_share_after": _shares(after, model.labels),
    }
    return calibration, record


def _shares(probabilities: np.ndarray, labels: list[str]) -> dict[str, float]:
    chosen = probabilities.argmax(axis=1)
    return {label: round(float((chosen == i).mean()), 5) for i, label in enumerate(labels)}


def rescore_held_out(
    model: ClassifierModel,
    calibration: ShortInputCalibration,
    data: EvalData,
    recorded: dict[str, Any],
) -> dict[str, Any]:
    """The held-out accuracy with the calibration: only inputs of at most `max_tokens` change,
    so they are scored with and without it and the recorded int8 figure moves by the difference
    (the longer ones keep the recorded answers: same model, same probabilities)."""
    assert data.labels is not None
    ids = [model.tokenizer.encode(t) for t in progress(data.texts, "tokenize", unit="texts")]
    short = [i for i, seq in enumerate(ids) if len(seq) <= calibration.max_tokens]
    before = raw_probabilities(model, [ids[i] for i in short]) if short else np.zeros((0, 1))
    after = calibration.transform(before) if short else before
    truth = [data.labels[i] for i in short]
    right_before = sum(
        model.labels[int(p.argmax())] in t for p, t in zip(before, truth, strict=True)
    )
    right_after = sum(model.labels[int(p.argmax())] in t for p, t in zip(after, truth, strict=True))
    out: dict[str, Any] = {
        "data": data.description,
        "documents": len(ids),
        "rescored_documents": len(short),
        "rescored_correct_before": int(right_before),
        "rescored_correct_after": int(right_after),
        "method": (
            "documents of at most max_tokens ids re-scored (int8) with and without the "
            "calibration; longer documents are untouched, so the recorded accuracy moves by "
            "the difference"
        ),
    }
    if recorded.get("documents") == len(ids) and "accuracy_int8" in recorded:
        out["accuracy_int8_before"] = recorded["accuracy_int8"]
        out["accuracy_int8_after"] = round(
            recorded["accuracy_int8"] + (right_after - right_before) / len(ids), 5
        )
    return out


def write_calibrated(
    source: Path,
    out_dir: Path,
    version: str,
    calibration: ShortInputCalibration,
    fitted: dict[str, Any],
    held_out: dict[str, Any] | None,
) -> Path:
    """A copy of `source` as `out_dir/NAME` at `version` with the calibration in its manifest,
    every file re-hashed; staged, loaded with the server's reader, then renamed into place."""
    raw = json.loads((source / MANIFEST_NAME).read_text(encoding="utf-8"))
    name = raw["name"]
    final = out_dir / name
    if final.resolve() == source.resolve():
        raise CalibrationRefused(f"{final} is the source bundle: bundles are never rewritten")
    with staged_bundle(out_dir, name) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        if raw.get("version") != version:
            raw["calibrated_from"] = f"{name}@{raw.get('version')}"
        raw["version"] = version
        raw[SHORT_INPUT_KEY] = {**calibration.section(), "fitted": fitted}
        if held_out is not None:
            raw[SHORT_INPUT_KEY]["held_out"] = held_out
            evaluation = raw.get("metrics", {}).get("evaluation", {})
            if "accuracy_int8_after" in held_out:
                evaluation["accuracy_int8_uncalibrated"] = evaluation["accuracy_int8"]
                evaluation["accuracy_int8"] = held_out["accuracy_int8_after"]
                evaluation["accuracy_int8_note"] = (
                    "with the short-input calibration (short_input.held_out says how); "
                    "accuracy_fp32 is the uncalibrated fp32 model's"
                )
        if "files" in raw:
            write_manifest(staging, raw)
        else:  # an ensemble: its members keep their own manifests and hashes
            (staging / MANIFEST_NAME).write_text(json.dumps(raw, indent=2) + "\n")
        loaded = load_bundle(staging)  # the server's reader: hashes, ranges, members
        assert isinstance(loaded, ClassifierModel) and loaded.manifest.short_input == calibration
    return final


def labelled_rows(data: EvalData) -> list[tuple[str, str]]:
    """(text, label) pairs of single-label data."""
    assert data.labels is not None
    if any(len(row) != 1 for row in data.labels):
        raise CalibrationRefused("calibration needs one label per training text")
    return [(t, row[0]) for t, row in zip(data.texts, data.labels, strict=True)]


def calibrate_bundle(
    source: Path,
    out_dir: Path,
    version: str,
    train: EvalData,
    held_out: EvalData | None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> Path:
    """Fit on `train`, re-score `held_out` (optional), write the new bundle."""
    try:
        model = load_bundle(source)
    except BundleError as e:
        raise CalibrationRefused(str(e)) from None
    if not isinstance(model, ClassifierModel):
        raise CalibrationRefused(f"{source} is a '{model.manifest.task}' bundle, not classify")
    calibration, fitted = fit_on_training_texts(
        model, labelled_rows(train), train.description, max_tokens
    )
    rescored = None
    if held_out is not None:
        recorded = model.manifest.metrics.get("evaluation", {})
        rescored = rescore_held_out(model, calibration, held_out, recorded)
    return write_calibrated(source, out_dir, version, calibration, fitted, rescored)


def imdb_split(data_dir: Path, split: str) -> EvalData:
    """IMDB's train or test split from `split`.csv.gz (text, label)."""
    data = read_eval_csv(data_dir / f"{split}.csv.gz", "text", "label", None)
    return EvalData(data.texts, data.labels, f"IMDB {split} split ({len(data.texts)} reviews)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export calibrate", description=__doc__)
    p.add_argument("bundle", type=Path, help="a classify bundle (or ensemble) directory")
    p.add_argument("--out", type=Path, required=True, help="bundles dir for the new version")
    p.add_argument("--version", required=True, help="the new bundle's version")
    p.add_argument("--data", type=Path, help=f"IMDB dir (default ${DATA_ENV} or ../shared/data)")
    p.add_argument("--train-csv", type=Path, help="labelled training texts instead of IMDB train")
    p.add_argument("--text-col", default="text")
    p.add_argument("--label-col", default="label")
    p.add_argument("--eval-csv", type=Path, help="held-out CSV to re-score (default IMDB test)")
    p.add_argument("--no-eval", action="store_true", help="skip re-scoring held-out data")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    data_dir = Path(args.data or os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)
    try:
        source_raw = json.loads((args.bundle / MANIFEST_NAME).read_text(encoding="utf-8"))
        if source_raw.get("version") == args.version:
            raise CalibrationRefused(f"--version {args.version!r} is the source's: give a new one")
        if args.train_csv is not None:
            train = read_eval_csv(args.train_csv, args.text_col, args.label_col, None)
        else:
            train = imdb_split(data_dir, "train")
        held_out = None
        if args.eval_csv is not None:
            held_out = read_eval_csv(args.eval_csv, args.text_col, args.label_col, None)
        elif not args.no_eval and args.train_csv is None:
            held_out = imdb_split(data_dir, "test")
        path = calibrate_bundle(
            args.bundle, args.out, args.version, train, held_out, args.max_tokens
        )
    except (CalibrationRefused, EvalDataError, OSError, ValueError) as e:
        print(f"python -m export calibrate: refused: {e}", file=sys.stderr)
        return REFUSED
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    print(json.dumps({"bundle": str(path), SHORT_INPUT_KEY: manifest[SHORT_INPUT_KEY]}), flush=True)
    return 0
