"""serve-constraints.txt pins the serve runtime's whole dependency closure, in step with the
`serve` extra (the Dockerfile, cloudbuild.yaml and scripts/serve.sh install with it)."""

from __future__ import annotations

import importlib.metadata as metadata
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "serve-constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"serve-constraints.txt: {line!r} is not pinned with =="
            pins[normalise(name)] = version.strip()
    return pins


def serve_extra() -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts/serve_requirements.py"), str(REPO / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pins = {}
    for line in out.split():
        requirement = Requirement(line)
        pins[normalise(requirement.name)] = next(iter(requirement.specifier)).version
    return pins


def test_constraints_agree_with_the_serve_extra() -> None:
    pins = constraints()
    for name, version in serve_extra().items():
        assert pins.get(name) == version, (
            f"{name}: extra pins {version}, constraints {pins.get(name)}"
        )


def test_constraints_cover_the_installed_closure() -> None:
    """Every distribution the serve extra pulls in (as installed here) is pinned, at the
    version installed: a new transitive dependency cannot enter the image unpinned."""
    pins = constraints()
    todo, seen = list(serve_extra()), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        dist = metadata.distribution(name)
        assert pins.get(name) == dist.version, (
            f"{name} {dist.version} is in the serve closure; constraints pin {pins.get(name)}"
        )
        for raw in dist.requires or []:
            requirement = Requirement(raw)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(normalise(requirement.name))
    assert set(pins) == seen, f"pinned but not in the closure: {sorted(set(pins) - seen)}"
