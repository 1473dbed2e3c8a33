"""Structured request logs: one JSON object per line that Cloud Logging parses (severity, time,
message, request id, latency, model version, httpRequest), and never the request's text."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from server_harness import start_server

from server.observability.requests import severity

TRACE_ID = "105445aa7843bc8bf206b12000100000"


def entries(log: str) -> list[dict[str, Any]]:
    lines = [line for line in log.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"severity", "time", "message"} <= set(entry) for entry in parsed)
    return parsed


def test_request_lines_carry_id_latency_model_and_no_text(
    tiny_bundles: Path, tmp_path: Path
) -> None:
    secret = f"zebracornucopia{uuid.uuid4().hex}"
    server = start_server(tiny_bundles, tmp_path)
    try:
        ok = server.post(
            "/classify",
            json={"text": f"{secret} was wonderful"},
            headers={"X-Request-ID": "req-42"},
        )
        assert ok.status_code == 200 and ok.headers["X-Request-ID"] == "req-42"
        generated = server.post(
            "/generate",
            json={"prompt": secret, "n_words": 3},
            headers={"X-Cloud-Trace-Context": f"{TRACE_ID}/1;o=1"},
        )
        assert generated.status_code == 200 and generated.headers["X-Request-ID"] == TRACE_ID
        bad = server.post(
            "/classify",
            json={"text": secret, "lang": secret},
            headers={"X-Request-ID": "not a valid id!"},
        )
        assert bad.status_code == 400
        fresh_id = bad.headers["X-Request-ID"]
        assert len(fresh_id) == 32 and fresh_id != "not a valid id!"
        assert server.get("/readyz").status_code == 200
    finally:
        assert server.stop() == 0
    log = server.log()
    assert secret not in log  # neither the review, nor the prompt, nor an echoed field name
    requests_logged = [e for e in entries(log) if e["message"] == "request"]
    by_id = {e["request_id"]: e for e in requests_logged}

    classify = by_id["req-42"]
    assert classify["severity"] == "INFO" and classify["logger"] == "server.requests"
    assert classify["model"] == "imdb-sentiment@tiny-test"
    assert classify["endpoint"] == "/classify"
    assert 0 < classify["latency_s"] < 30
    assert classify["httpRequest"]["status"] == 200
    assert classify["httpRequest"]["requestMethod"] == "POST"
    assert classify["httpRequest"]["latency"] == f"{classify['latency_s']:.6f}s"

    generate = by_id[TRACE_ID]
    assert generate["trace_id"] == TRACE_ID and generate["model"] == "imdb-lm@tiny-test"
    assert by_id[fresh_id]["httpRequest"]["status"] == 400
    # Probes are logged at debug level only (LOG_LEVEL=info here): no noise every few seconds.
    assert not any(e["endpoint"] == "/readyz" for e in requests_logged)


def test_request_log_can_be_switched_off(tiny_bundles: Path, tmp_path: Path) -> None:
    server = start_server(tiny_bundles, tmp_path, REQUEST_LOG="false")
    try:
        assert server.post("/classify", json={"text": "fine"}).status_code == 200
    finally:
        assert server.stop() == 0
    assert not any(e["message"] == "request" for e in entries(server.log()))


def test_debug_level_logs_probes_too(tiny_bundles: Path, tmp_path: Path) -> None:
    server = start_server(tiny_bundles, tmp_path, LOG_LEVEL="debug")
    try:
        assert server.get("/healthz").status_code == 200
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    probes = [e for e in lines if e["message"] == "request" and e["endpoint"] == "/healthz"]
    assert probes and all(e["severity"] == "DEBUG" for e in probes)


@pytest.mark.parametrize(
    "status,endpoint,level",
    [
        (200, "/classify", "INFO"),
        (400, "/classify", "INFO"),
        (500, "/classify", "ERROR"),
        (502, "/generate", "ERROR"),
        (503, "/classify", "WARNING"),
        (504, "/generate", "WARNING"),
        (200, "/readyz", "DEBUG"),
        (503, "/readyz", "DEBUG"),
        (500, "/metrics", "ERROR"),
    ],
)
def test_severity_by_status_and_endpoint(status: int, endpoint: str, level: str) -> None:
    assert logging.getLevelName(severity(status, endpoint)) == level
