"""scripts/prune_runtime.py: what it deletes from an installed runtime is never loaded. A copy of
this venv's onnxruntime + numpy is pruned, then a fresh interpreter that sees only that copy
loads a real bundle, warms it up and classifies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import onnxruntime

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from prune_runtime import UNUSED, prune, pruned

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
    assert not pruned("numpy/_core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so")
    assert all("/" in pattern for pattern in UNUSED)


def test_pruned_runtime_serves(tmp_path: Path, tiny_bundles: Path) -> None:
    site = tmp_path / "site-packages"
    for package in (numpy, onnxruntime):
        source = Path(str(package.__file__)).parent
        shutil.copytree(source, site / source.name)
    for libs in Path(numpy.__file__).parent.parent.glob("numpy.libs"):
        shutil.copytree(libs, site / libs.name)
    assert prune(site) > 0
    assert not list((site / "onnxruntime" / "capi").glob("libonnxruntime.so*"))
    assert not (site / "numpy" / "_core" / "tests").exists()
    script = (
        "import sys, numpy, onnxruntime\n"
        f"assert numpy.__file__.startswith({str(site)!r}), numpy.__file__\n"
        f"assert onnxruntime.__file__.startswith({str(site)!r}), onnxruntime.__file__\n"
        "from bundle import load_bundle\n"
        f"m = load_bundle({str(tiny_bundles / 'imdb-sentiment')!r}); m.warm_up()\n"
        "p = m.predict_texts(['a fine film', 'dull'])\n"
        "assert p.shape == (2, len(m.labels)), p.shape\n"
        f"lm = load_bundle({str(tiny_bundles / 'imdb-lm')!r}); lm.warm_up()\n"
        "print('served')\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}"}
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert run.returncode == 0 and "served" in run.stdout, run.stderr[-2000:]
