"""Ensemble bundles: several classifier bundles answering as one named model with the mean of
their probabilities (ULMFiT's forward + backward recipe; see docs/bundle-format.md).

An ensemble is a directory whose manifest.json has an "ensemble" section naming member bundles
stored inside it (members/<name>/). Each member is verified like any bundle (hashes, vocab);
the members must share labels, multi_label/threshold and the exact tokenizer tables, or the
ensemble is refused. The result is a plain `ClassifierModel` whose rows runner averages the
members' answers, so every caller (the server, its instrumented wrapper) uses it unchanged.
A short-input calibration (bundle/calibration.py) is the ensemble's own, fitted on and applied to
the mean; a member's own "short_input" is not used inside an ensemble (its raw session runs).
`load_bundle` here is the package's `bundle.load_bundle`: an ensemble or a single bundle.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .manifest import _NAME_RE as NAME_RE
from .manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    BundleError,
    Manifest,
    check_short_input,
    file_digest,
)
from .runtime import ClassifierModel, Model
from .runtime import load_bundle as load_single
from .tokenizer import Tokenizer

ENSEMBLE_KEY = "ensemble"
COMBINE = "mean_probabilities"
MEMBERS_DIR = "members"
_SHARED_IDS = ("vocab_size", "pad_id", "bos_id", "unk_id")


def read_raw(directory: Path) -> dict[str, Any] | None:
    """The manifest's JSON, or None when there is none or it is unreadable (the ordinary
    bundle reader then reports why)."""
    try:
        raw = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def is_ensemble(directory: str | Path) -> bool:
    raw = read_raw(Path(directory))
    return raw is not None and ENSEMBLE_KEY in raw


class EnsembleRows:
    """Runs every member on the same rows (reading order; each member reverses them itself if it
    is backward, and chunks them its own way) and answers with the mean probabilities."""

    def __init__(self, members: Sequence[ClassifierModel]) -> None:
        self.members = list(members)

    @property
    def run_tokens(self) -> int:
        return min(member.run_tokens for member in self.members)

    def __call__(
        self,
        batch: Sequence[Sequence[int]],
        run_options: ort.RunOptions | None = None,
        max_tokens: int | None = None,
    ) -> np.ndarray:
        total: np.ndarray | None = None
        for member in self.members:
            probs = member.rows(batch, run_options, max_tokens)
            total = probs.astype(np.float64) if total is None else total + probs
        assert total is not None
        return (total / len(self.members)).astype(np.float32)


class EnsembleClassifier(ClassifierModel):
    """A ClassifierModel over EnsembleRows; `members` are the loaded member bundles, and its
    `session` is the first member's (for introspection only: the rows runner does the work)."""

    def __init__(
        self, manifest: Manifest, tokenizer: Tokenizer, members: Sequence[ClassifierModel]
    ) -> None:
        super().__init__(manifest, tokenizer, members[0].session, EnsembleRows(members))
        self.members = list(members)


def _fail(directory: Path, problem: str) -> BundleError:
    return BundleError(f"ensemble {directory}: {problem}")


def check_members(directory: Path, members: Sequence[Any]) -> None:
    """Members must be classifiers that read the same ids and answer over the same labels."""
    if len(members) < 2:
        raise _fail(directory, f"an ensemble needs at least 2 members, got {len(members)}")
    first = members[0]
    for member in members:
        where = f"member {member.manifest.name!r}"
        if not isinstance(member, ClassifierModel):
            raise _fail(directory, f"{where} is a '{member.manifest.task}' bundle, not classify")
        if isinstance(member, EnsembleClassifier):
            raise _fail(directory, f"{where} is itself an ensemble")
        if member.labels != first.labels:
            raise _fail(directory, f"{where} has labels {member.labels}, not {first.labels}")
        if (member.multi_label, member.threshold) != (first.multi_label, first.threshold):
            raise _fail(directory, f"{where} differs in multi_label/threshold from the first")
        arch, first_arch = member.manifest.architecture, first.manifest.architecture
        same_ids = all(arch[k] == first_arch[k] for k in _SHARED_IDS)
        same_tables = file_digest(member.manifest.tokenizer_path) == file_digest(
            first.manifest.tokenizer_path
        )
        if not (same_ids and same_tables):
            raise _fail(
                directory,
                f"{where} has other tokenizer tables than {first.manifest.name!r} "
                "(members must share one vocabulary)",
            )


def _member_dirs(directory: Path, raw: dict[str, Any]) -> list[Path]:
    section = raw.get(ENSEMBLE_KEY)
    if not isinstance(section, dict) or section.get("combine") != COMBINE:
        raise _fail(directory, f'"ensemble" needs "combine": "{COMBINE}" and "members"')
    entries = section.get("members")
    if not isinstance(entries, list) or not entries:
        raise _fail(directory, '"ensemble" lists no members')
    root = directory.resolve()
    found = []
    for entry in entries:
        path = (directory / str(entry.get("dir", ""))).resolve()
        if root not in path.parents or not (path / MANIFEST_NAME).is_file():
            raise _fail(directory, f"member {entry!r} is not a bundle inside the ensemble")
        found.append(path)
    return found


def load_ensemble(
    directory: str | Path, threads: int = 1, inter_threads: int = 1
) -> ClassifierModel:
    """Verify an ensemble (its manifest, then every member as any bundle) and load it."""
    directory = Path(directory)
    raw = read_raw(directory)
    if raw is None:
        raise _fail(directory, "unreadable manifest.json")
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise _fail(directory, f"unknown schema_version {raw.get('schema_version')!r}")
    if not isinstance(raw.get("name"), str) or not NAME_RE.match(raw["name"]):
        raise _fail(directory, f"invalid name {raw.get('name')!r}")
    if raw.get("task") != "classify" or "version" not in raw:
        raise _fail(directory, 'an ensemble is a "classify" bundle with a "version"')
    members = [
        load_single(path, threads=threads, inter_threads=inter_threads)
        for path in _member_dirs(directory, raw)
    ]
    check_members(directory, members)
    first = members[0]
    assert isinstance(first, ClassifierModel)
    if list(raw.get("labels", [])) != first.labels:
        raise _fail(directory, f"labels {raw.get('labels')} are not the members' {first.labels}")
    if bool(raw.get("multi_label", False)) != first.multi_label:
        raise _fail(directory, "multi_label differs from the members'")
    resolved = dict(raw, direction="forward")  # callers pass reading order; members reverse
    resolved["architecture"] = {k: first.manifest.architecture[k] for k in _SHARED_IDS}
    if first.threshold is not None:
        resolved["threshold"] = first.threshold
    check_short_input(directory, resolved)  # the ensemble's own, applied to the mean
    classifiers = [m for m in members if isinstance(m, ClassifierModel)]
    return EnsembleClassifier(Manifest(directory, resolved), first.tokenizer, classifiers)


def load_bundle(
    directory: str | Path, threads: int = 1, inter_threads: int = 1, model_path: Path | None = None
) -> Model:
    """Any bundle: an ensemble (loaded as above) or a single one (`bundle.runtime.load_bundle`,
    whose `model_path` picks another model file of that bundle)."""
    if model_path is None and is_ensemble(directory):
        return load_ensemble(directory, threads=threads, inter_threads=inter_threads)
    return load_single(
        directory, threads=threads, inter_threads=inter_threads, model_path=model_path
    )
