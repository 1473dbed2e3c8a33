"""`python -m export ensemble MEMBER_DIR MEMBER_DIR ... --out MODELS_DIR --name NAME`: classifier
bundles -> one ensemble bundle answering with the mean of their probabilities.

The members are checked (bundle/ensemble.py's rules) before anything is written, copied into
NAME/members/<i>-<member>/ so the ensemble deploys as one directory, and measured: held-out accuracy
(int8) of the ensemble and of each member with --eval-csv, and the session time per review of
the ensemble vs its first member (one thread, one review per run). Exit status: 0 on success,
2 when a member or the input is refused (one line; nothing written).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bundle import BundleError, ClassifierModel, load_bundle
from bundle.ensemble import COMBINE, ENSEMBLE_KEY, MEMBERS_DIR, NAME_RE, check_members
from bundle.tokenizer import TokenizerError

from .eval_data import EvalData, EvalDataError, read_eval_csv, synthetic_texts
from .progress import progress
from .staging import staged_bundle

REFUSED = 2
LATENCY_TEXTS = 50  # reviews timed one by one (the eval texts' first ones, else generated)


class EnsembleRefused(Exception):
    """Members or arguments that cannot make an ensemble (one line)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export ensemble", description=__doc__)
    p.add_argument("members", nargs="+", type=Path, help="classifier bundle directories")
    p.add_argument("--out", type=Path, default=Path("models"), help="bundles dir (default models/)")
    p.add_argument("--name", required=True, help="the ensemble's model name")
    p.add_argument("--version", help="bundle version (default: a UTC timestamp)")
    p.add_argument("--eval-csv", type=Path, help="held-out CSV for accuracy")
    p.add_argument("--text-col", default="text", help="--eval-csv text column (default: text)")
    p.add_argument("--label-col", help="--eval-csv label column")
    p.add_argument("--label-delim", help="separator of several labels in --label-col")
    return p


def accuracy(model: ClassifierModel, data: EvalData) -> float:
    """Single-label: argmax accuracy; multi-label: fastai's accuracy_multi at the threshold."""
    assert data.labels is not None
    probs = np.concatenate(
        [model.predict_texts(data.texts[i : i + 32]) for i in range(0, len(data.texts), 32)]
    )
    if model.multi_label:
        target = np.array([[label in row for label in model.labels] for row in data.labels])
        assert model.threshold is not None
        return float(((probs > model.threshold) == target).mean())
    chosen = [model.labels[i] for i in probs.argmax(axis=1)]
    return float(np.mean([c in row for c, row in zip(chosen, data.labels, strict=True)]))


def ms_per_review(model: ClassifierModel, ids: list[list[int]]) -> float:
    """Median session time of one review per run, in milliseconds (tokenizing excluded)."""
    model.predict_ids(ids[:1])  # first-run allocations
    times = []
    for seq in ids:
        started = time.perf_counter()
        model.predict_ids([seq])
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def _load_members(dirs: list[Path], out_dir: Path) -> list[Any]:
    try:
        members = [load_bundle(d) for d in dirs]
        check_members(out_dir, members)
    except (BundleError, TokenizerError) as e:
        raise EnsembleRefused(str(e)) from None
    ids = [m.manifest.model_id for m in members]  # two runs may both be named imdb-sentiment
    if len(set(ids)) != len(ids):
        raise EnsembleRefused(f"the same bundle twice ({', '.join(ids)})")
    return members


def _measure(ensemble: ClassifierModel, data: EvalData | None) -> dict[str, Any]:
    assert hasattr(ensemble, "members")
    members: list[ClassifierModel] = ensemble.members
    metrics: dict[str, Any] = {}
    if data is not None:
        members_acc = {
            m.manifest.model_id: accuracy(m, data)
            for m in progress(members, "member accuracy", unit="member")
        }
        metrics["evaluation"] = {
            "data": data.description,
            "held_out": data.held_out,
            "documents": len(data.texts),
            "metric": "accuracy_multi" if ensemble.multi_label else "accuracy",
            "accuracy_int8": accuracy(ensemble, data),
            "members_accuracy_int8": members_acc,
        }
    texts = (
        data.texts[:LATENCY_TEXTS]
        if data is not None
        else synthetic_texts(ensemble.tokenizer.vocab, LATENCY_TEXTS)
    )
    ids = [ensemble.tokenizer.encode(t) for t in texts]
    ensemble_ms, first_ms = ms_per_review(ensemble, ids), ms_per_review(members[0], ids)
    metrics["latency"] = {
        "texts": len(ids),
        "mean_tokens": float(np.mean([len(s) for s in ids])),
        "threads": 1,
        "ms_per_review_median": ensemble_ms,
        "first_member": members[0].manifest.model_id,
        "first_member_ms_per_review_median": first_ms,
        "cost_vs_first_member": ensemble_ms / first_ms,
    }
    return metrics


def build_ensemble(
    member_dirs: list[Path], out_dir: Path, name: str, version: str, data: EvalData | None
) -> Path:
    """Check, copy and measure; the staging directory is renamed into place only at the end."""
    members = _load_members(member_dirs, out_dir / name)
    final = out_dir / name
    if final.resolve() in [d.resolve() for d in member_dirs]:
        raise EnsembleRefused(f"--name {name!r} would replace one of its own members")
    with staged_bundle(out_dir, name) as staging:
        entries = []
        for i, member in enumerate(members):
            rel = f"{MEMBERS_DIR}/{i}-{member.manifest.name}"
            shutil.copytree(member.manifest.directory, staging / rel)
            entries.append(
                {
                    "name": member.manifest.name,
                    "version": member.manifest.version,
                    "direction": "backward" if member.backwards else "forward",
                    "dir": rel,
                }
            )
        first = members[0]
        raw: dict[str, Any] = {
            "schema_version": 1,
            "name": name,
            "version": version,
            "task": "classify",
            "labels": first.labels,
            "multi_label": first.multi_label,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            ENSEMBLE_KEY: {"combine": COMBINE, "members": entries},
        }
        if first.threshold is not None:
            raw["threshold"] = first.threshold
        (staging / "manifest.json").write_text(json.dumps(raw, indent=2, ensure_ascii=False))
        ensemble = load_bundle(staging)  # the reader the server runs
        assert isinstance(ensemble, ClassifierModel)
        raw["metrics"] = _measure(ensemble, data)
        (staging / "manifest.json").write_text(json.dumps(raw, indent=2, ensure_ascii=False))
        load_bundle(staging)
    return final


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if not NAME_RE.match(args.name):
            raise EnsembleRefused(
                f"--name {args.name!r}: use lower-case letters, digits, '.', '_', '-'"
            )
        data = None
        if args.eval_csv is not None:
            if args.label_col is None:
                raise EnsembleRefused("--eval-csv needs --label-col")
            data = read_eval_csv(args.eval_csv, args.text_col, args.label_col, args.label_delim)
        version = args.version or f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        path = build_ensemble(args.members, args.out, args.name, version, data)
    except (EnsembleRefused, EvalDataError) as e:
        print(f"python -m export ensemble: refused: {e}", file=sys.stderr)
        return REFUSED
    manifest = json.loads((path / "manifest.json").read_text())
    print(json.dumps({"bundle": str(path), "metrics": manifest["metrics"]}), flush=True)
    return 0
