"""Delete from an installed serve runtime (a site-packages folder) what serving never loads.

Why: the image and the slim venv install whole wheels, but the server only imports numpy's
core, onnxruntime's Python binding, falcon's WSGI app and gunicorn's gthread worker. What goes
(sizes measured on the pinned versions, in docs/deploy.md):
  - onnxruntime/capi/libonnxruntime.so.*: the C API library for programs linking onnxruntime
    themselves; the Python binding (onnxruntime_pybind11_state) is linked statically and never
    opens it (readelf: no NEEDED entry; strace of a session start: never opened).
  - onnxruntime's model tooling (quantization, transformers, tools, datasets, backend): export
    side, never imported by `import onnxruntime`.
  - numpy's test suites and test extensions (_simd, _*_tests), type stubs, f2py, distutils, C
    headers and PyInstaller hook: build/test parts; numpy.testing, fft, polynomial and ma:
    loaded lazily by numpy and never by the server (numpy.random stays: the sampler uses it).
  - falcon's ASGI app, test client and benchmarks: the server is WSGI.
  - whole distributions that onnxruntime or gunicorn declare but serving never imports:
    protobuf and flatbuffers (onnxruntime's model tooling), packaging (gunicorn's gevent worker).
  - gunicorn's ASGI and "dirty" arbiters, control socket client and the gevent/eventlet/tornado
    workers: the server runs the gthread worker with the control socket off.
With --sourceless (the image only): every module keeps its bytecode, moved beside where its
source was, and the .py source goes. Python imports such a .pyc directly; tracebacks keep file
names and line numbers but show no source lines. The image is read-only and compiled once, so
the source is never needed to run; it is ~4 MB (docs/deploy.md).
Each removal is a folder or file pattern below, not a guess at run time; `python -m server
--check` after pruning (the Dockerfile runs it) proves the rest still serves.

Standard library only: it runs in the image before anything else is there.
Usage: python prune_runtime.py [--sourceless] SITE_PACKAGES
"""

from __future__ import annotations

import compileall
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
    "numpy/testing",
    "numpy/fft",
    "numpy/polynomial",
    "numpy/ma",
    "falcon/asgi",
    "falcon/testing",
    "falcon/bench",
    "google/protobuf",
    "google/_upb",
    "protobuf-*.dist-info",
    "flatbuffers",
    "flatbuffers-*.dist-info",
    "packaging",
    "packaging-*.dist-info",
    "gunicorn/asgi",
    "gunicorn/dirty",
    "gunicorn/ctl",
    "gunicorn/workers/ggevent.*",
    "gunicorn/workers/geventlet.*",
    "gunicorn/workers/gtornado.*",
    "gunicorn/workers/gasgi.*",
    "gunicorn/workers/__pycache__/ggevent.*",
    "gunicorn/workers/__pycache__/geventlet.*",
    "gunicorn/workers/__pycache__/gtornado.*",
    "gunicorn/workers/__pycache__/gasgi.*",
)
# A serve runtime has these; anything else is the wrong folder, refused before deleting a byte.
REQUIRED_PACKAGES = ("numpy", "onnxruntime", "falcon", "gunicorn")


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
    missing = [name for name in REQUIRED_PACKAGES if not (site_packages / name).is_dir()]
    if missing:
        raise SystemExit(f"prune_runtime: {site_packages} is not a serve runtime (no {missing})")
    tops = {pattern.split("/", 1)[0] for pattern in UNUSED}
    roots = [
        entry
        for entry in site_packages.iterdir()
        if any(fnmatch.fnmatchcase(entry.name, top) for top in tops)
    ]
    removed = 0
    for root in roots:
        if root.is_file() or root.is_symlink():
            if pruned(root.name):
                removed += root.lstat().st_size
                root.unlink()
            continue
        for path in sorted(root.rglob("*"), reverse=True):  # children before their folders
            if path.is_dir() and not path.is_symlink():
                if not any(path.iterdir()):
                    path.rmdir()
            elif pruned(path.relative_to(site_packages).as_posix()):
                removed += path.lstat().st_size
                path.unlink()
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()
    return removed


def make_sourceless(site_packages: Path) -> int:
    """Compile every module to a .pyc beside its source, then delete the sources and the
    __pycache__ folders; bytes removed (net)."""
    before = _tree_bytes(site_packages)
    if not compileall.compile_dir(str(site_packages), quiet=1, legacy=True, workers=1):
        raise SystemExit(f"prune_runtime: byte-compiling {site_packages} failed")
    for source in site_packages.rglob("*.py"):
        if source.with_suffix(".pyc").is_file():
            source.unlink()
    for cache in sorted(site_packages.rglob("__pycache__"), reverse=True):
        for cached in cache.iterdir():
            cached.unlink()
        cache.rmdir()
    return before - _tree_bytes(site_packages)


def _tree_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() or p.is_symlink())


def main(argv: list[str]) -> int:
    sourceless = "--sourceless" in argv
    paths = [arg for arg in argv if arg != "--sourceless"]
    if len(paths) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    site_packages = Path(paths[0])
    removed = prune(site_packages)
    print(f"prune_runtime: removed {removed / 1e6:.1f} MB from {site_packages}")
    if sourceless:
        saved = make_sourceless(site_packages)
        print(f"prune_runtime: sources replaced by bytecode, {saved / 1e6:.1f} MB less")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
