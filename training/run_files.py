"""The files of a training run directory that leave the machine it trained on.

A weights-only run on a lent GPU machine comes back as files; `rebuild` turns them into learners
here. Both sides name the files from here: scripts/train-gpu.sh runs
`python3 -m training.run_files RUN RESULTS` to copy them, and `rebuild` checks they are all present
before it loads anything. Standard library only: the check answers at once, and the copy works
even where training failed to import.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
METRICS_FILE = "metrics.json"
WEIGHTS_DIR = "weights"
WEIGHT_STEMS = ("lm", "classifier")  # fp16 chunks weights/<stem>-<i>.pt (training/weights.py)
STUDENT_STEM = "student"  # a distill run's (training/distill.py): its weights and metrics key
CORPUS_FILES = ("corpus.npz", "corpus.json")  # training/corpus.py


def bring_back(run: Path) -> list[Path]:
    """What a weights-only run must bring back for `rebuild`: relative paths within `run`."""
    chunks = sorted(p.relative_to(run) for p in (run / WEIGHTS_DIR).glob("*-*.pt"))
    return [Path(CONFIG_FILE), Path(VOCAB_FILE), Path(METRICS_FILE), *chunks]


def _metrics(run: Path) -> dict[str, Any]:
    path = run / METRICS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def weight_stems(run: Path) -> tuple[str, ...]:
    """The weights `rebuild` turns into learners: a distill run's student, else LM and classifier."""
    return (STUDENT_STEM,) if STUDENT_STEM in _metrics(run) else WEIGHT_STEMS


def missing_for_rebuild(run: Path, corpus: Path) -> list[str]:
    """Every file `rebuild` needs that is absent, as paths a user can look for (empty: all here).
    metrics.json lists the weight chunks the run wrote, so a chunk lost in transfer is named."""
    missing = [str(corpus / name) for name in CORPUS_FILES if not (corpus / name).is_file()]
    missing += [
        str(run / name)
        for name in (CONFIG_FILE, VOCAB_FILE, METRICS_FILE)
        if not (run / name).is_file()
    ]
    metrics, stems = _metrics(run), weight_stems(run)
    written = [f for key in stems for f in metrics.get(key, {}).get("weight_files", [])]
    for stem in stems:
        if not any((run / WEIGHTS_DIR).glob(f"{stem}-*.pt")):
            missing.append(str(run / WEIGHTS_DIR / f"{stem}-*.pt"))
    missing += [str(run / name) for name in written if not (run / name).is_file()]
    return missing


def copy_back(run: Path, results: Path) -> list[Path]:
    """Copy what `bring_back` names (those that exist) into `results`, in the run's layout."""
    copied = []
    for rel in bring_back(run):
        if (run / rel).is_file():
            (results / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run / rel, results / rel)
            copied.append(rel)
    return copied


if __name__ == "__main__":
    for path in copy_back(Path(sys.argv[1]), Path(sys.argv[2])):
        print(f"brought back: {path}")
