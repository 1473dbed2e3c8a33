"""Check bundles before they are baked into an image: `python -m bundle.verify DIR [DIR...]`.

Why a separate gate: Cloud Build copies bundles from a bucket and would happily bake a truncated
upload or a mismatched tokenizer into an image that then fails its startup probe in production.
This runs the project's own reader (the code the server runs) on each bundle: manifest and
sha256 of every file, then a real onnxruntime load and one inference whose output must have the
right shape and be finite (probabilities in [0, 1], each row summing to 1 unless the classifier
is multi-label; LM logits over the vocabulary
for the prompt and for one further step with the carried state).

Each DIR is a bundle (holds manifest.json) or a parent of several bundles. Exit status: 0 when
every bundle passes, 1 when any fails (each failure printed on one line), 2 on bad usage.
json + numpy + onnxruntime only, like the rest of `bundle/`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ensemble import is_ensemble, load_bundle
from .manifest import MANIFEST_NAME, BundleError, load_manifest
from .runtime import ClassifierModel, LanguageModel

PROBE_TEXTS = ("This film was a delight from start to finish.", "A dull, tedious mess.")
PROBE_PROMPT = "The movie was"
_PROBABILITY_SUM_TOLERANCE = 1e-3


class VerifyError(Exception):
    """A bundle loaded but its inference output is wrong, or a DIR holds no bundle."""


@dataclass(frozen=True)
class BundleReport:
    """What one verified bundle is and how long each check took (seconds)."""

    directory: Path
    model_id: str
    task: str
    manifest_s: float
    load_s: float
    inference_s: float

    def line(self) -> str:
        return (
            f"ok    {self.model_id:<40} {self.task:<9} manifest+hashes {self.manifest_s:6.2f}s  "
            f"load {self.load_s:6.2f}s  inference {self.inference_s * 1000:7.1f}ms  ({self.directory})"
        )


def find_bundles(path: Path) -> list[Path]:
    """`path` itself if it is a bundle, else its sub-directories that are, in name order."""
    if (path / MANIFEST_NAME).is_file():
        return [path]
    if not path.is_dir():
        raise VerifyError(f"{path}: not a directory")
    found = sorted(child for child in path.iterdir() if (child / MANIFEST_NAME).is_file())
    if not found:
        raise VerifyError(
            f"{path}: holds no bundle (no {MANIFEST_NAME} in it or its sub-directories)"
        )
    return found


def _require(condition: bool, directory: Path, problem: str) -> None:
    if not condition:
        raise VerifyError(f"bundle {directory}: {problem}")


def check_classifier(model: ClassifierModel, directory: Path) -> None:
    """One batch through the classifier: probabilities of the right shape in [0, 1] that sum to
    one (a multi-label model's per-label sigmoids need not)."""
    probabilities = np.asarray(model.predict_texts(list(PROBE_TEXTS)))
    expected = (len(PROBE_TEXTS), len(model.labels))
    _require(
        probabilities.shape == expected,
        directory,
        f"classifier returned shape {probabilities.shape}, expected {expected}",
    )
    _require(
        bool(np.isfinite(probabilities).all()),
        directory,
        "classifier returned non-finite probabilities",
    )
    _require(
        bool(((probabilities >= 0) & (probabilities <= 1)).all()),
        directory,
        "classifier returned probabilities outside [0, 1]",
    )
    if model.multi_label:
        return
    sums = probabilities.sum(axis=1)
    _require(
        bool(np.allclose(sums, 1.0, atol=_PROBABILITY_SUM_TOLERANCE)),
        directory,
        f"classifier probabilities do not sum to 1 (row sums {sums.tolist()})",
    )


def check_language_model(model: LanguageModel, directory: Path) -> None:
    """The prompt in one call, then one more token with the carried state, as the server does."""
    ids = list(model.tokenizer.encode(PROBE_PROMPT)) or [model.bos_id]
    _require(
        all(0 <= i < model.vocab_size for i in ids),
        directory,
        f"tokenizer produced ids outside [0, {model.vocab_size})",
    )
    state = model.initial_state(1)
    logits, state = model.step(np.array([ids], dtype=np.int64), state)
    logits = np.asarray(logits)
    _require(
        logits.shape == (1, model.vocab_size),
        directory,
        f"language model returned logits of shape {logits.shape}, expected {(1, model.vocab_size)}",
    )
    _require(
        bool(np.isfinite(logits).all()), directory, "language model returned non-finite logits"
    )
    next_id = np.array([[int(np.argmax(logits[0]))]], dtype=np.int64)
    logits, state = model.step(next_id, state)
    _require(
        np.asarray(logits).shape == (1, model.vocab_size) and bool(np.isfinite(logits).all()),
        directory,
        "language model returned bad logits for a one-token step with carried state",
    )
    _require(
        all(bool(np.isfinite(s).all()) for s in state),
        directory,
        "language model state is non-finite",
    )


def verify_bundle(directory: Path) -> BundleReport:
    """Manifest and hashes, then load with the runtime reader, then one checked inference."""
    start = time.perf_counter()
    # An ensemble's manifest lists members, not files: loading it checks each member's hashes.
    own = None if is_ensemble(directory) else load_manifest(directory, verify_files=True)
    loaded = time.perf_counter()
    model = load_bundle(directory, threads=1)
    ready = time.perf_counter()
    manifest = own or model.manifest
    if isinstance(model, ClassifierModel):
        check_classifier(model, directory)
    elif isinstance(model, LanguageModel):
        check_language_model(model, directory)
    else:  # a reader that grew a task this gate does not know must not pass silently
        raise VerifyError(f"bundle {directory}: no inference check for task {manifest.task!r}")
    done = time.perf_counter()
    return BundleReport(
        directory,
        manifest.model_id,
        manifest.task,
        manifest_s=loaded - start,
        load_s=ready - loaded,
        inference_s=done - ready,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bundle.verify",
        description="Verify bundles (manifest, sha256, load, one inference) before deploying them.",
    )
    parser.add_argument(
        "dirs",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="a bundle directory, or a directory holding several",
    )
    parser.add_argument(
        "--require-task",
        action="append",
        default=[],
        choices=("classify", "generate"),
        help="fail unless some verified bundle serves this task (repeatable)",
    )
    args = parser.parse_args(argv)

    failures: list[str] = []
    tasks: set[str] = set()
    for root in args.dirs:
        try:
            bundles = find_bundles(root)
        except VerifyError as exc:
            failures.append(str(exc))
            continue
        for directory in bundles:
            try:
                report = verify_bundle(directory)
            except (BundleError, VerifyError) as exc:
                failures.append(str(exc))
            except Exception as exc:  # an unexpected crash is still a failed bundle, not a pass
                failures.append(f"bundle {directory}: {type(exc).__name__}: {exc}")
            else:
                tasks.add(report.task)
                print(report.line(), flush=True)
    for task in args.require_task:
        if task not in tasks:
            failures.append(f"no verified bundle serves task {task!r}")
    for failure in failures:
        print(f"FAIL  {failure}", file=sys.stderr, flush=True)
    if failures:
        print(
            f"bundle.verify: {len(failures)} problem(s); do not deploy these bundles",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
