"""Delete from an installed serve runtime (a site-packages folder) what serving never loads.

Why: the image and the slim venv install whole wheels, but the server only imports numpy's
core and onnxruntime's Python binding. What goes (sizes measured on the pinned versions, in
docs/deploy.md):
  - onnxruntime/capi/libonnxruntime.so.*: the C API library for programs linking onnxruntime
    themselves; the Python binding (onnxruntime_pybind11_state) is linked statically and never
    opens it (readelf: no NEEDED entry; strace of a session start: never opened).
  - onnxruntime's model tooling (quantization, transformers, tools, datasets, backend): export
    side, never imported by `import onnxruntime`.
  - numpy's test suites and test extensions (_simd, _*_tests), type stubs, f2py, distutils, C headers and
    PyInstaller hook: build/test parts.
Each removal is a folder or file pattern below, not a guess at run time; `python -m server
--check` after pruning (the Dockerfile runs it) proves the rest still serves.

Standard library only: it runs in the image before anything else is there.
Usage: python prune_runtime.py SITE_PACKAGES
"""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

# fnmatch patterns on a path relative to site-packages (`*` also crosses `/`). A file goes when
# it, or any folder above it, matches one.
UNUSED = (
    "onnxruntime/capi/libonnxruntime.so.*",
    "onnxruntime/quantization",
    "onnxruntime/transformers",
    "onnxruntime/tools",
    "onnxruntime/datasets",
    "onnxruntime/backend",
    "numpy/tests",
    "numpy/*/tests",
    "numpy/f2py",
    "numpy/distutils",
    "numpy/_pyinstaller",
    "numpy/_core/include",
    "numpy/*.pyi",
    "numpy/_core/_*_tests.*",
    "numpy/_core/_simd.*",
)
PRUNED_PACKAGES = sorted({pattern.split("/", 1)[0] for pattern in UNUSED})


def pruned(relative: str) -> bool:
    """Whether the file at `relative` (to site-packages, `/`-separated) is removed."""
    parts = relative.split("/")
    return any(
        fnmatch.fnmatchcase("/".join(parts[:depth]), pattern)
        for depth in range(1, len(parts) + 1)
        for pattern in UNUSED
    )


def prune(site_packages: Path) -> int:
    """Remove every pruned file under `site_packages` (and folders left empty); bytes removed."""
    if not all((site_packages / package).is_dir() for package in PRUNED_PACKAGES):
        raise SystemExit(f"prune_runtime: {site_packages} lacks one of {PRUNED_PACKAGES}")
    removed = 0
    for package in PRUNED_PACKAGES:
        root = site_packages / package
        for path in sorted(root.rglob("*"), reverse=True):  # children before their folders
            if path.is_dir() and not path.is_symlink():
                if not any(path.iterdir()):
                    path.rmdir()
            elif pruned(path.relative_to(site_packages).as_posix()):
                removed += path.lstat().st_size
                path.unlink()
    return removed


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    removed = prune(Path(argv[0]))
    print(f"prune_runtime: removed {removed / 1e6:.1f} MB from {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
