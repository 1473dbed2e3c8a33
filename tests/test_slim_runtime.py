"""The slim runtime: a fresh venv with only `pip install .[serve]` (constrained by
serve-constraints.txt, then pruned by scripts/prune_runtime.py) serves both endpoints, and
torch, fastai, fastcore and spaCy are not even importable there.

Slow (a venv and a pip install from PyPI): marked `slow`, run by .ci/run.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest
from server_harness import REPO_ROOT, start_server

pytestmark = pytest.mark.slow

FORBIDDEN = ("torch", "fastai", "fastcore", "spacy")


@pytest.fixture(scope="module")
def slim_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv (no system site-packages) with the project installed with the serve extra."""
    root = tmp_path_factory.mktemp("slim-venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    python = root / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-c",
            str(REPO_ROOT / "serve-constraints.txt"),
            f"{REPO_ROOT}[serve]",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=root,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    # As scripts/serve.sh and the Dockerfile do: what serving never loads is deleted.
    site = next(root.glob("lib/python3*/site-packages"))
    prune = subprocess.run(
        [str(python), str(REPO_ROOT / "scripts" / "prune_runtime.py"), str(site)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert prune.returncode == 0 and "removed" in prune.stdout, prune.stderr
    return python


def test_heavy_packages_are_not_importable(slim_python: Path) -> None:
    probe = (
        "import importlib.util, json; print(json.dumps({n: importlib.util.find_spec(n) "
        f"is not None for n in {FORBIDDEN!r}}}))"
    )
    result = subprocess.run(
        [str(slim_python), "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=slim_python.parent,
    )
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip() == '{"torch": false, "fastai": false, "fastcore": false, '
        '"spacy": false}'
    )


def test_server_package_imports_nothing_heavy(slim_python: Path, tiny_bundles: Path) -> None:
    """Import the whole app and load the bundles, then list what got imported."""
    probe = (
        "import os, sys; from server.config import Settings; from server.app import create_app; "
        "from server.runtime import ServerRuntime; "
        "rt = ServerRuntime.load(Settings(model_dir=__import__('pathlib').Path(sys.argv[1]))); "
        "create_app(rt.settings, rt); rt.warm_up(); "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})); "
        "print(sys.modules['server'].__file__); os._exit(0)"
    )
    result = subprocess.run(
        [str(slim_python), "-c", probe, str(tiny_bundles)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=slim_python.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    imported, location = result.stdout.strip().splitlines()[-2:]
    assert imported == "[]"
    assert "site-packages" in location  # the installed package, not the repo checkout


def test_slim_server_serves_both_endpoints(
    slim_python: Path, tiny_bundles: Path, tmp_path: Path
) -> None:
    # cwd outside the repo: `python -m server` must come from the venv's site-packages.
    server = start_server(tiny_bundles, tmp_path / "logs", python=str(slim_python), cwd=tmp_path)
    try:
        classify = server.post("/classify", json={"texts": ["great fun", "awful"]})
        assert classify.status_code == 200, classify.text
        assert len(classify.json()["results"]) == 2
        generate = server.post("/generate", json={"prompt": "The film", "n_words": 10, "seed": 3})
        assert generate.status_code == 200, generate.text
        assert generate.json()["samples"][0].startswith("The film")
        assert server.get("/openapi.json").status_code == 200
        assert server.get("/").status_code == 200  # packaged static files
    finally:
        assert server.stop() == 0, server.log()
    assert sys.executable != str(slim_python)
