"""scripts/prune_runtime.py: what it deletes from an installed runtime is never loaded. A copy of
this venv's serve closure is pruned and made sourceless as in the image, then the production
server, seeing only that copy, answers over real HTTP."""

from __future__ import annotations

import json
import os
import shutil
import sys
from importlib import metadata
from pathlib import Path

from server_harness import start_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from prune_runtime import UNUSED, make_sourceless, prune, pruned

REPO = Path(__file__).resolve().parent.parent


def test_rules() -> None:
    assert pruned("onnxruntime/capi/libonnxruntime.so.1.32.0")
    assert pruned("onnxruntime/quantization/__pycache__/quantize.cpython-311.pyc")
    assert pruned("numpy/_core/tests/test_umath.py")
    assert pruned("numpy/__init__.pyi")
    assert pruned("numpy/linalg/_linalg.pyi")
    assert pruned("numpy/_core/_simd.cpython-311-x86_64-linux-gnu.so")
    assert pruned("numpy/_core/_multiarray_tests.cpython-311-x86_64-linux-gnu.so")
    assert not pruned("onnxruntime/capi/onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so")
    assert not pruned("onnxruntime/__init__.py")
    assert not pruned("numpy/__init__.py")
    assert not pruned("numpy/random/_generator.cpython-311-x86_64-linux-gnu.so")
    assert pruned("google/protobuf/message.py") and pruned("protobuf-7.36.2.dist-info/RECORD")
    assert pruned("gunicorn/workers/ggevent.py")
    assert not pruned("gunicorn/workers/gthread.py") and not pruned("falcon/app.py")
    assert not pruned("numpy/_core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so")
    # Whole top-level entries go only for the distributions serving never imports.
    whole = {pattern for pattern in UNUSED if "/" not in pattern}
    assert whole == {
        "flatbuffers",
        "flatbuffers-*.dist-info",
        "packaging",
        "packaging-*.dist-info",
        "protobuf-*.dist-info",
    }


SERVE_DISTRIBUTIONS = (
    "numpy",
    "onnxruntime",
    "falcon",
    "gunicorn",
    "protobuf",
    "flatbuffers",
    "packaging",
)


def serve_runtime_copy(site: Path) -> None:
    """This venv's copy of the serve closure (packages, .libs and .dist-info folders)."""
    for name in SERVE_DISTRIBUTIONS:
        dist = metadata.distribution(name)
        root = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or []} - {".."}  # not bin/ scripts
        for top in tops:
            source = root / top
            if source.is_dir():
                shutil.copytree(source, site / top, dirs_exist_ok=True)
            elif source.is_file():
                shutil.copy2(source, site / top)


def test_pruned_sourceless_runtime_serves_over_http(tmp_path: Path, tiny_bundles: Path) -> None:
    """The image's runtime: pruned and sourceless, and nothing else on sys.path (`python -S`).
    The production server starts on it, classifies and generates over real HTTP."""
    site = tmp_path / "site-packages"
    serve_runtime_copy(site)
    assert prune(site) > 0
    make_sourceless(site)  # this venv lacks some bytecode: the net size may even grow here
    assert not list((site / "onnxruntime" / "capi").glob("libonnxruntime.so*"))
    assert not (site / "numpy" / "_core" / "tests").exists()
    assert not (site / "google").exists() and not (site / "packaging").exists()
    assert not list(site.rglob("*.py")) and list(site.rglob("*.pyc"))
    python = tmp_path / "python-S"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    python.chmod(0o755)
    server = start_server(
        tiny_bundles,
        tmp_path / "logs",
        python=str(python),
        PYTHONPATH=f"{site}{os.pathsep}{REPO}",
        PYTHONDONTWRITEBYTECODE="1",
    )
    try:
        answer = server.post("/classify", json={"text": "a fine film"})
        assert answer.status_code == 200, answer.text
        labels = json.loads((tiny_bundles / "imdb-sentiment" / "manifest.json").read_text())
        assert set(answer.json()["probabilities"]) == set(labels["labels"])
        sample = server.post("/generate", json={"prompt": "the film", "n_words": 3, "seed": 1})
        assert sample.status_code == 200, sample.text
        assert server.get("/metrics").status_code == 200
    finally:
        assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log(), server.log()[-3000:]
