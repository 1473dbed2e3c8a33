"""Shared fixtures. `tiny_bundles` really trains the `tiny` fastai config on a synthetic corpus
and really exports it, so server tests run against bundles made by the shipped pipeline."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bundle import ClassifierModel, LanguageModel, load_bundle

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "tiny-bundles"
PIPELINE_SOURCES = ("training", "export", "bundle", "tests/corpus.py")


def imdb_dir() -> Path:
    """The IMDB data set: $IMDB_DIR, else ../shared/data/imdb beside the repo."""
    return Path(os.environ.get("IMDB_DIR") or REPO.parent / "shared" / "data" / "imdb")


def _pipeline_digest() -> str:
    """Bundles are reused only while the code that makes them is unchanged."""
    h = hashlib.sha256()
    for source in PIPELINE_SOURCES:
        path = REPO / source
        for f in sorted(path.rglob("*.py") if path.is_dir() else [path]):
            h.update(str(f.relative_to(REPO)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def run_module(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"python -m {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def build_tiny_bundles(work: Path, out: Path) -> Path:
    """Synthetic corpus -> `python -m training all --config tiny` -> `python -m export`."""
    sys.path.insert(0, str(REPO / "tests"))
    from corpus import write_corpus

    data = write_corpus(work / "data")
    # a relative --out, as users type it (fastai joins relative export names onto learn.path)
    run_module(
        "training",
        "all",
        "--config",
        "tiny",
        "--threads",
        "1",
        "--data",
        str(data),
        "--out",
        "run",
        cwd=work,
    )
    run_module(
        "export",
        "--run",
        str(work / "run"),
        "--out",
        str(out),
        "--data",
        str(data),
        "--lm-eval-docs",
        "20",
        "--keep-fp32",
        "--version",
        "tiny-test",
    )
    return out


@pytest.fixture(scope="session")
def tiny_run_and_bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(training run dir with fastai learners, bundles dir), cached by the pipeline's source hash."""
    target = CACHE / _pipeline_digest()
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:  # concurrent test runs build once, the others wait
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "bundles" / "imdb-sentiment" / "manifest.json").exists():
            shutil.rmtree(target, ignore_errors=True)
            work = tmp_path_factory.mktemp("tiny-build")
            build_tiny_bundles(work, work / "bundles")
            shutil.copytree(work, target, ignore=shutil.ignore_patterns("cache"))
    return target / "run", target / "bundles"


@pytest.fixture(scope="session")
def tiny_bundles(
    tiny_run_and_bundles: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A private copy of the tiny bundles (tests may not damage the shared cache)."""
    copy = tmp_path_factory.mktemp("bundles")
    shutil.copytree(tiny_run_and_bundles[1], copy, dirs_exist_ok=True)
    return copy


@pytest.fixture(scope="session")
def imdb() -> Path:
    path = imdb_dir()
    if not (path / "train.csv.gz").exists() and not (path / "sample.csv").exists():
        pytest.skip(f"IMDB data not found at {path} (set IMDB_DIR)")
    return path


@pytest.fixture(scope="session")
def tiny_classifier(tiny_bundles: Path) -> ClassifierModel:
    """The tiny classify bundle, loaded as the server loads it (verified, onnxruntime)."""
    model = load_bundle(tiny_bundles / "imdb-sentiment")
    assert isinstance(model, ClassifierModel)
    return model


@pytest.fixture(scope="session")
def tiny_lm(tiny_bundles: Path) -> LanguageModel:
    model = load_bundle(tiny_bundles / "imdb-lm")
    assert isinstance(model, LanguageModel)
    return model
