"""Print the runtime requirements (the `serve` extra of pyproject.toml) one per line.

Why: the image and the Cloud Build verify step must install exactly the pinned serve
dependencies and nothing from the train/export extras. Deriving the list from pyproject.toml at
build time means there is no second, hand-kept requirements file to drift. Standard library
only (tomllib), because it runs inside a bare python:3.11-slim before anything is installed.

Usage: python serve_requirements.py [pyproject.toml] [--extra serve]
Exits 1 when a requirement is not pinned with `==`, so an unpinned dependency cannot slip into
the image unnoticed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

# A requirement on the project itself, e.g. "fastai-onnx-serve[train,serve]".
_SELF_REFERENCE = re.compile(r"^\s*(?P<name>[A-Za-z0-9._-]+)\s*\[(?P<extras>[^\]]+)\]\s*$")
_PINNED = re.compile(r"^[A-Za-z0-9._-]+(\[[^\]]*\])?\s*==\s*[A-Za-z0-9.+!_-]+\s*(;.*)?$")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve_extra(pyproject: dict, extra: str, _seen: frozenset[str] = frozenset()) -> list[str]:
    """Requirements of `extra`, expanding references to the project's own extras."""
    project = pyproject["project"]
    extras: dict[str, list[str]] = project.get("optional-dependencies", {})
    if extra not in extras:
        raise KeyError(f"pyproject.toml has no extra {extra!r} (has: {', '.join(sorted(extras))})")
    own_name = _normalise(project["name"])
    requirements: list[str] = []
    for requirement in extras[extra]:
        match = _SELF_REFERENCE.match(requirement)
        if match and _normalise(match["name"]) == own_name:
            for inner in (part.strip() for part in match["extras"].split(",")):
                if inner not in _seen:
                    requirements.extend(resolve_extra(pyproject, inner, _seen | {extra}))
        else:
            requirements.append(requirement.strip())
    # Keep the first occurrence of each requirement, in order.
    return list(dict.fromkeys(requirements))


def unpinned(requirements: list[str]) -> list[str]:
    """The requirements that are not pinned to one exact version."""
    return [r for r in requirements if not _PINNED.match(r)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", nargs="?", default="pyproject.toml", type=Path)
    parser.add_argument("--extra", default="serve")
    args = parser.parse_args(argv)
    with args.pyproject.open("rb") as handle:
        pyproject = tomllib.load(handle)
    requirements = resolve_extra(pyproject, args.extra)
    loose = unpinned(requirements)
    if loose:
        print(f"error: not pinned with '==': {', '.join(loose)}", file=sys.stderr)
        return 1
    if not requirements:
        print(f"error: extra {args.extra!r} is empty", file=sys.stderr)
        return 1
    sys.stdout.write("".join(f"{r}\n" for r in requirements))
    return 0


if __name__ == "__main__":
    sys.exit(main())
