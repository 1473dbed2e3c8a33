"""The server process: readiness around warm-up, refusing bad bundles/config, SIGTERM, logs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from server_harness import (
    REPO_ROOT,
    assert_json_error,
    free_port,
    launch_server,
    server_env,
    start_server,
)


def run_to_exit(model_dir: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=server_env(model_dir, free_port(), **env),
    )


def test_readyz_is_503_until_warm_up_has_run(tiny_bundles: Path, tmp_path: Path) -> None:
    server = start_server(tiny_bundles, tmp_path, wait_ready=False, WARMUP_DELAY_S="2")
    try:
        assert server.get("/healthz").status_code == 200  # alive while warming
        response = server.get("/readyz")
        body = assert_json_error(response, 503)
        assert "warming up" in body["description"]
        assert response.headers["Retry-After"] == "1"
        # Requests are still served during warm-up; readiness only steers traffic.
        assert server.post("/classify", json={"text": "fine"}).status_code == 200
        deadline = time.monotonic() + 30
        while server.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
    finally:
        assert server.stop() == 0


def test_the_port_opens_loaded_and_its_first_request_is_answered(
    tiny_bundles: Path, tmp_path: Path
) -> None:
    """What Cloud Run's TCP startup probe (service.yaml) relies on: the port accepts only once
    every bundle is verified and loaded, and a request sent the moment it does is answered,
    warm-up or not (here held back 2 s)."""
    server = launch_server(tiny_bundles, tmp_path, WARMUP_DELAY_S="2")
    process = server.process
    port = int(server.base_url.rsplit(":", 1)[1])
    try:
        deadline = time.monotonic() + 60
        while True:  # as a TCP probe does: connect until the port accepts
            assert process.poll() is None and time.monotonic() < deadline, server.log()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.005)
        assert '"models loaded"' in server.log()  # logged by the master before it binds
        assert server.post("/classify", json={"text": "fine"}).status_code == 200
        assert server.get("/readyz").status_code == 503  # still warming up: served anyway
    finally:
        assert server.stop() == 0


def test_logs_are_json_with_startup_times(tiny_bundles: Path, tmp_path: Path) -> None:
    server = start_server(tiny_bundles, tmp_path, ACCESS_LOG="true")
    try:
        assert server.get("/healthz").status_code == 200
    finally:
        server.stop()
    entries = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert all({"severity", "time", "message"} <= set(entry) for entry in entries)
    loaded = next(e for e in entries if e["message"] == "models loaded")
    ready = next(e for e in entries if e["message"] == "ready")
    assert len(loaded["models"]) == 2 and loaded["load_s"] >= 0
    assert 0 < loaded["since_exec_s"] <= ready["since_exec_s"] < 60
    assert any("GET /healthz" in e["message"] for e in entries)  # ACCESS_LOG=true


def test_sigterm_exits_zero_within_cloud_run_window(tiny_bundles: Path, tmp_path: Path) -> None:
    server = start_server(tiny_bundles, tmp_path)
    assert server.post("/generate", json={"prompt": "hi", "n_words": 3}).status_code == 200
    started = time.monotonic()
    assert server.stop(timeout=10) == 0
    assert time.monotonic() - started < 10
    log = server.log()
    # The worker inherited onnxruntime sessions through fork: it must not abort on the way out.
    assert "SIGABRT" not in log and "terminate called" not in log, log
    assert "Shutting down: Master" in log


def test_empty_model_dir_refuses_to_start(tmp_path: Path) -> None:
    result = run_to_exit(tmp_path)
    assert result.returncode == 3
    assert "holds no bundle" in result.stderr and str(tmp_path) in result.stderr
    assert "Traceback" not in result.stderr


def test_tampered_bundle_refuses_to_start(tiny_bundles: Path, tmp_path: Path) -> None:
    copy = tmp_path / "models"
    shutil.copytree(tiny_bundles, copy)
    manifest = json.loads((copy / "imdb-sentiment" / "manifest.json").read_text())
    model_file = copy / "imdb-sentiment" / manifest["model"]["file"]
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    result = run_to_exit(copy)
    assert result.returncode == 3
    assert "imdb-sentiment" in result.stderr and "Traceback" not in result.stderr


def test_invalid_configuration_refuses_to_start(tiny_bundles: Path) -> None:
    result = run_to_exit(tiny_bundles, MAX_N_WORDS="lots", WEB_THREADS="0")
    assert result.returncode == 2
    assert "MAX_N_WORDS" in result.stderr and "WEB_THREADS" in result.stderr


def test_unexpected_arguments_are_refused(tiny_bundles: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server", "--bind", "0.0.0.0:1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "usage" in result.stderr


def test_more_onnxruntime_threads_load_in_the_worker(tiny_bundles: Path, tmp_path: Path) -> None:
    """With an ORT thread pool, preload is off (pools do not survive fork): still serves."""
    server = start_server(tiny_bundles, tmp_path, ORT_INTRA_OP_THREADS="2")
    try:
        assert server.post("/classify", json={"text": "fine"}).status_code == 200
        response = server.post("/generate", json={"prompt": "hi", "n_words": 3})
        assert response.status_code == 200
    finally:
        assert server.stop() == 0


def test_onnxruntime_telemetry_stays_off(
    tiny_bundles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime's PyPI builds write a telemetry store (device id, event queue) at import unless
    ORT_DISABLE_TELEMETRY is set first (bundle/__init__.py sets it). The bare import is the
    control: it shows this build has telemetry, so the checks can fail. Checked: the server, and
    the image's bundle gate (`python -m bundle.verify`)."""
    for var in ("CI", "GITHUB_ACTIONS", "TF_BUILD", "ORT_DISABLE_TELEMETRY"):
        monkeypatch.delenv(var, raising=False)  # the SDK stays quiet on CI machines by itself
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    store = home / ".cache" / "Microsoft"
    subprocess.run([sys.executable, "-c", "import onnxruntime"], env=dict(os.environ), timeout=60)
    if not store.exists():
        pytest.skip("this onnxruntime build writes no telemetry store")
    shutil.rmtree(store)
    server = start_server(tiny_bundles, tmp_path / "logs")
    try:
        assert server.post("/classify", json={"text": "fine"}).status_code == 200
        assert server.post("/generate", json={"prompt": "hi", "n_words": 3}).status_code == 200
    finally:
        assert server.stop() == 0
    assert not store.exists(), sorted(str(p) for p in store.rglob("*"))
    gate = [sys.executable, "-m", "bundle.verify", str(tiny_bundles)]
    assert subprocess.run(gate, cwd=REPO_ROOT, env=dict(os.environ), timeout=120).returncode == 0
    assert not store.exists(), sorted(str(p) for p in store.rglob("*"))


@pytest.mark.parametrize("task_dir", ["imdb-lm", "imdb-sentiment"])
def test_one_bundle_serves_its_task_and_404s_the_other(
    tiny_bundles: Path, tmp_path: Path, task_dir: str
) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_bundles / task_dir, models / task_dir)
    server = start_server(models, tmp_path)
    try:
        classify = server.post("/classify", json={"text": "good"})
        generate = server.post("/generate", json={"prompt": "good", "n_words": 2})
        served, missing = (generate, classify) if task_dir == "imdb-lm" else (classify, generate)
        assert served.status_code == 200
        assert_json_error(missing, 404)
        assert server.get("/").status_code == 200
        assert server.post("/tokenize", json={"text": "good"}).status_code == 200
    finally:
        server.stop()
