"""`python -m bundle.verify`: the gate Cloud Build runs before any image is built.

Real bundles ($DEPLOY_TEST_BUNDLES when set, else the `tiny_bundles` fixture of conftest.py), real onnxruntime sessions, run as the CLI the pipeline calls. Each broken
case is made from a copy of a good bundle, so a gate that lets anything through fails here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bundle.manifest import write_manifest

REPO = Path(__file__).resolve().parent.parent


def bundle_source(request: pytest.FixtureRequest) -> Path:
    """Directory holding imdb-lm/ and imdb-sentiment/: $DEPLOY_TEST_BUNDLES when set, else the
    tiny_bundles fixture."""
    named = os.environ.get("DEPLOY_TEST_BUNDLES")
    if named:
        assert Path(named, "imdb-lm", "manifest.json").is_file(), (
            f"DEPLOY_TEST_BUNDLES={named} holds no imdb-lm/"
        )
        return Path(named)
    try:
        return Path(request.getfixturevalue("tiny_bundles"))
    except pytest.FixtureLookupError:
        pytest.skip(
            "no bundles: needs the tiny_bundles fixture (tests/conftest.py) or $DEPLOY_TEST_BUNDLES"
        )


@pytest.fixture
def models(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A private copy of both bundles, free to break."""
    target = tmp_path / "models"
    source = bundle_source(request)
    for name in ("imdb-lm", "imdb-sentiment"):
        shutil.copytree(source / name, target / name)
    return target


def verify(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bundle.verify", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def model_file(bundle: Path) -> Path:
    return bundle / json.loads((bundle / "manifest.json").read_text())["model"]["file"]


def test_good_bundles_pass_with_one_line_each(models: Path) -> None:
    result = verify("--require-task", "classify", "--require-task", "generate", models)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("ok ") for line in lines)
    assert "generate" in lines[0] and "classify" in lines[1]


def test_single_bundle_dir_is_accepted(models: Path) -> None:
    result = verify(models / "imdb-sentiment")
    assert result.returncode == 0, result.stderr


def test_truncated_model_fails(models: Path) -> None:
    path = model_file(models / "imdb-lm")
    path.write_bytes(path.read_bytes()[:-100])
    result = verify(models)
    assert result.returncode == 1
    assert "imdb-lm" in result.stderr and "bytes" in result.stderr
    assert "ok " in result.stdout, "the intact bundle is still reported"


def test_same_size_corruption_fails_on_the_hash(models: Path) -> None:
    path = model_file(models / "imdb-sentiment")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    result = verify(models)
    assert result.returncode == 1 and "sha256" in result.stderr


def test_missing_bundle_for_a_required_task_fails(models: Path) -> None:
    shutil.rmtree(models / "imdb-lm")
    result = verify("--require-task", "classify", "--require-task", "generate", models)
    assert result.returncode == 1 and "'generate'" in result.stderr


def test_directory_without_bundles_fails(tmp_path: Path) -> None:
    result = verify(tmp_path)
    assert result.returncode == 1 and "holds no bundle" in result.stderr


def test_swapped_model_fails_at_load(models: Path) -> None:
    """A classifier bundle carrying the LM graph, with hashes that match: only a load catches it."""
    clf = models / "imdb-sentiment"
    shutil.copyfile(model_file(models / "imdb-lm"), model_file(clf))
    write_manifest(clf, json.loads((clf / "manifest.json").read_text()))
    result = verify(clf)
    assert result.returncode == 1 and "imdb-sentiment" in result.stderr


def test_a_graph_that_is_not_a_softmax_fails_the_inference_check(models: Path) -> None:
    """Right names and shapes, hashes intact, but the 'probabilities' are token lengths."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["lengths"], ["len_f"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["len_f", "axes"], ["col"]),
            helper.make_node("Concat", ["col", "col"], ["probabilities"], axis=1),
            helper.make_node("Identity", ["input_ids"], ["ids_unused"]),
        ],
        "not_a_softmax",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("ids_unused", TensorProto.INT64, ["batch", "seq"]),
        ],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    clf = models / "imdb-sentiment"
    onnx.save(model, clf / "bad.onnx")
    raw = json.loads((clf / "manifest.json").read_text())
    raw["model"]["file"] = "bad.onnx"
    raw["model"]["inputs"] = [  # a whole-sequence graph's (still served: bundle/classifier_rows.py)
        {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]},
        {"name": "lengths", "dtype": "int64", "shape": ["batch"]},
    ]
    raw["files"]["bad.onnx"] = {}
    write_manifest(clf, raw)
    result = verify(clf)
    assert result.returncode == 1
    assert "outside [0, 1]" in result.stderr or "do not sum to 1" in result.stderr, result.stderr


def test_deploy_script_dry_run_verifies_uploads_and_stages_only_build_inputs(
    models: Path, tmp_path: Path
) -> None:
    """scripts/deploy.sh up to the gcloud calls (printed, not run: gcloud is not installed here)."""
    stage = tmp_path / "stage"
    env = {
        **os.environ,
        "DRY_RUN": "1",
        "GCP_PROJECT": "test-project",
        "MODEL_BUCKET": "test-bucket",
        "ALLOW_DIRTY": "1",
        "LOCAL_MODELS": str(models),
        "STAGE_DIR": str(stage),
        "PYTHON": sys.executable,
    }
    result = subprocess.run(
        ["bash", "scripts/deploy.sh"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if line.startswith("DRY_RUN gcloud")]
    assert len(commands) == 2
    upload, submit = commands
    prefix = re.search(r"gs://test-bucket/(bundles/\d{8}T\d{6}Z-[0-9a-f]+)", upload)
    assert "storage rsync" in upload and str(models) in upload and prefix
    assert "builds submit" in submit and f"_BUNDLE_PREFIX={prefix.group(1)}" in submit.replace(
        "\\", ""
    )
    staged = {p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file()}
    assert {
        "cloudbuild.yaml",
        "Dockerfile",
        ".dockerignore",
        "pyproject.toml",
        "scripts/serve_requirements.py",
        "bundle/verify.py",
        "server/__main__.py",
    } <= staged
    assert not [
        p
        for p in staged
        if p.split("/")[0] in ("training", "export", "tests", "models", ".git")
        or "__pycache__" in p
    ], "only the build inputs are uploaded; bundles come from the bucket"
