"""Integrity at the process level: a damaged or mismatched bundle stops `python -m server` with
exit status 3 and one clear log line, before any request is answered with a wrong result.

Each case damages a private copy of the real tiny bundles the way it happens in practice (an
interrupted upload, a hand-edited manifest, a tokenizer copied from another model, a bundle
written by a newer exporter), then runs the production entry point until it exits.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from server_harness import REPO_ROOT, free_port, server_env

EXIT_BAD_BUNDLES = 3
START_TIMEOUT_S = 90


def run_to_exit(model_dir: Path) -> subprocess.CompletedProcess[str]:
    """The production server on `model_dir`, until it exits (a healthy one would not)."""
    return subprocess.run(
        [sys.executable, "-m", "server"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        env=server_env(model_dir, free_port()),
    )


def read_manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text())


def write_manifest(bundle: Path, manifest: dict[str, Any]) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


def rehash(bundle: Path, name: str) -> None:
    """Record a file's new size and sha256, as a careless re-export would: hashes then pass."""
    manifest = read_manifest(bundle)
    data = (bundle / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    write_manifest(bundle, manifest)


def truncate_model(bundle: Path) -> None:
    path = bundle / read_manifest(bundle)["model"]["file"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def unknown_schema_version(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    manifest["schema_version"] = 99
    write_manifest(bundle, manifest)


def manifest_vocab_disagrees(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    manifest["architecture"]["vocab_size"] += 7
    write_manifest(bundle, manifest)


def bigger_tokenizer(bundle: Path) -> None:
    """A tokenizer from a model with a larger vocabulary, the manifest updated to agree with it
    and every hash recomputed: only the graph itself (its embedding) can tell."""
    manifest = read_manifest(bundle)
    name = manifest["tokenizer"]["file"]
    tables = json.loads((bundle / name).read_text())
    tables["vocab"] += [f"extraword{i}" for i in range(40)]
    (bundle / name).write_text(json.dumps(tables))
    manifest["architecture"]["vocab_size"] = len(tables["vocab"])
    write_manifest(bundle, manifest)
    rehash(bundle, name)


def manifest_not_json(bundle: Path) -> None:
    (bundle / "manifest.json").write_text('{"schema_version": 1, "name": ')


def swapped_model_file(bundle: Path) -> None:
    """The other task's graph under this bundle's name, hashes updated: inputs do not match.
    The manifest's model entry (file, format) follows the graph, so onnxruntime loads it and
    only the bundle's own check can tell."""
    manifest = read_manifest(bundle)
    other = "imdb-lm" if bundle.name == "imdb-sentiment" else "imdb-sentiment"
    other_entry = read_manifest(bundle.parent / other)["model"]
    (bundle / manifest["model"]["file"]).unlink()
    del manifest["files"][manifest["model"]["file"]]
    shutil.copy(bundle.parent / other / other_entry["file"], bundle / other_entry["file"])
    for key in ("file", "format"):  # the declared inputs stay this task's
        if key in other_entry:
            manifest["model"][key] = other_entry[key]
    write_manifest(bundle, manifest)
    rehash(bundle, other_entry["file"])


CASES: list[tuple[str, str, Callable[[Path], None], str]] = [
    # id, bundle, damage, what the message must say
    ("truncated-classifier", "imdb-sentiment", truncate_model, "truncated or replaced"),
    ("truncated-lm", "imdb-lm", truncate_model, "truncated or replaced"),
    (
        "unknown-schema-version",
        "imdb-sentiment",
        unknown_schema_version,
        "unknown schema_version 99",
    ),
    ("manifest-vocab-vs-tokenizer", "imdb-lm", manifest_vocab_disagrees, "mismatched tokenizer"),
    ("lm-tokenizer-bigger-than-model", "imdb-lm", bigger_tokenizer, "predicts over"),
    (
        "classifier-tokenizer-bigger-than-model",
        "imdb-sentiment",
        bigger_tokenizer,
        "warm-up failed",
    ),
    ("manifest-not-json", "imdb-lm", manifest_not_json, "not valid JSON"),
    ("swapped-graph", "imdb-sentiment", swapped_model_file, "model inputs"),
]


@pytest.mark.parametrize(
    "bundle_name,damage,expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_damaged_bundle_refuses_to_start(
    tiny_bundles: Path,
    tmp_path: Path,
    bundle_name: str,
    damage: Callable[[Path], None],
    expected: str,
) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_bundles, models)
    damage(models / bundle_name)
    result = run_to_exit(models)
    log = result.stdout + result.stderr
    assert result.returncode == EXIT_BAD_BUNDLES, log[-3000:]
    assert expected in log, log[-3000:]
    assert bundle_name in log or "warm-up failed" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(line["severity"] == "CRITICAL" for line in lines), log[-3000:]


def test_intact_copy_starts(tiny_bundles: Path, tmp_path: Path) -> None:
    """The control: the same copy, undamaged, serves (so the cases above fail for their damage)."""
    from server_harness import start_server

    models = tmp_path / "models"
    shutil.copytree(tiny_bundles, models)
    server = start_server(models, tmp_path)
    try:
        assert server.post("/classify", json={"text": "fine"}).status_code == 200
    finally:
        assert server.stop() == 0
