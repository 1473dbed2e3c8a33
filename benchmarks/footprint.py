"""What each way must install: the `serve` extra vs the fastai + torch stack, in bytes on disk.

Sizes are the files each distribution's RECORD lists (as installed, bytecode included), summed
over the dependency closure. The `serve` extra is measured in a fresh venv (`pip install
--only-binary=:all:` of the pinned list, as the Dockerfile does) when asked, else from the same
distributions in the current venv; either way less what scripts/prune_runtime.py deletes, as
the image and scripts/serve.sh do (the runtime as installed for serving). The fastai stack (fastai's closure + falcon + gunicorn for
the naive app) is read from the current venv: installing torch again just to weigh it is not
cheap. Its CUDA wheels are shown apart, since a CPU-only torch build would not bring them.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import re
import subprocess
import sys
import tempfile
import venv
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
TOOLING = {"pip", "setuptools", "wheel"}
NAIVE_ROOTS = ("fastai", "falcon", "gunicorn")
CUDA_NAME = re.compile(r"^(nvidia-|cuda-|triton$)")


def _prune_rules() -> Callable[[str], bool]:
    """scripts/prune_runtime.py's `pruned` (a script, not a package: loaded from its file)."""
    spec = importlib.util.spec_from_file_location(
        "prune_runtime", REPO / "scripts" / "prune_runtime.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pruned: Callable[[str], bool] = module.pruned
    return pruned


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(path: list[str] | None = None) -> dict[str, metadata.Distribution]:
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions(path=path) if path else metadata.distributions():
        found.setdefault(normalise(dist.metadata["Name"]), dist)
    return found


def closure(
    roots: Iterable[str], dists: dict[str, metadata.Distribution]
) -> tuple[list[str], list[str]]:
    """Installed distributions reachable from `roots` (markers evaluated, extras not followed),
    and the requirements that are not installed here (listed, not guessed)."""
    seen: list[str] = []
    missing: list[str] = []
    todo = [normalise(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen or name in missing:
            continue
        dist = dists.get(name)
        if dist is None:
            missing.append(name)
            continue
        seen.append(name)
        for raw in dist.requires or []:
            requirement = Requirement(raw)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(normalise(requirement.name))
    return sorted(seen), sorted(missing)


def dist_bytes(dist: metadata.Distribution, skip: Callable[[str], bool] | None = None) -> int:
    """Bytes of the files a distribution installed, less those `skip` says are deleted."""
    total = 0
    for file in dist.files or []:
        if skip is not None and skip(str(file)):
            continue
        try:
            total += Path(str(dist.locate_file(file))).stat().st_size
        except OSError:
            continue
    return total


def weigh(
    names: Iterable[str],
    dists: dict[str, metadata.Distribution],
    skip: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    sizes = {name: dist_bytes(dists[name], skip) for name in names if name not in TOOLING}
    cuda = sum(size for name, size in sizes.items() if CUDA_NAME.match(name))
    return {
        "bytes": sum(sizes.values()),
        "cuda_bytes": cuda,
        "packages": len(sizes),
        "largest": sorted(sizes.items(), key=lambda kv: -kv[1])[:8],
    }


def serve_requirements() -> list[str]:
    """The pinned serve extra, derived from pyproject.toml by the deploy script."""
    script = REPO / "scripts" / "serve_requirements.py"
    out = subprocess.run(
        [sys.executable, str(script), str(REPO / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def fresh_venv_serve(requirements: list[str], timeout_s: float = 600) -> dict[str, Any]:
    """Install the pinned serve extra into a new venv and weigh everything but pip itself."""
    with tempfile.TemporaryDirectory(prefix="serve-venv-") as root:
        venv.EnvBuilder(with_pip=True, clear=True).create(root)
        python = Path(root) / "bin" / "python"
        install = subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--only-binary=:all:",
                *requirements,
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if install.returncode != 0:
            return {"error": (install.stdout + install.stderr)[-2000:]}
        site = next(Path(root).glob("lib/python3*/site-packages"))
        dists = installed([str(site)])
        return {
            **weigh(dists, dists, _prune_rules()),
            "distributions": sorted(set(dists) - TOOLING),
            "how": "fresh venv, pip install --only-binary=:all: "
            + " ".join(requirements)
            + ", less scripts/prune_runtime.py's deletions",
        }


def measure(fresh_venv: bool) -> dict[str, Any]:
    dists = installed()
    requirements = serve_requirements()
    serve_roots = [Requirement(r).name for r in requirements]
    serve_names, serve_missing = closure(serve_roots, dists)
    naive_names, naive_missing = closure(NAIVE_ROOTS, dists)
    result: dict[str, Any] = {
        "serve_requirements": requirements,
        "serve_from_dev_venv": {
            **weigh(serve_names, dists, _prune_rules()),
            "unpruned_bytes": weigh(serve_names, dists)["bytes"],
            "distributions": serve_names,
            "missing": serve_missing,
        },
        "naive_stack": {
            **weigh(naive_names, dists),
            "roots": list(NAIVE_ROOTS),
            "distributions": naive_names,
            "missing": naive_missing,
            "how": "dependency closure of fastai + falcon + gunicorn in the dev venv",
        },
    }
    result["serve_fresh_venv"] = fresh_venv_serve(requirements) if fresh_venv else None
    return result


def artifacts(run_dir: Path, models: Path) -> dict[str, Any]:
    """Model files each way loads: the learner pickles vs the bundles."""
    pickles = {
        p.name: p.stat().st_size
        for p in (run_dir / "classifier.pkl", run_dir / "lm.pkl")
        if p.is_file()
    }
    bundles = {
        p.parent.name: sum(
            f.stat().st_size
            for f in p.parent.iterdir()
            if f.is_file() and f.name != "model.fp32.onnx"
        )
        for p in models.glob("*/manifest.json")
    }
    return {"learner_pickles_bytes": pickles, "bundle_bytes": bundles}
