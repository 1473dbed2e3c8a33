"""Optional bearer-token auth (AUTH_TOKEN_HASH) over real HTTP, and its parsing in-process."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import (
    REPO_ROOT,
    RunningServer,
    assert_json_error,
    free_port,
    server_env,
    start_server,
)

from server.http.auth import bearer_token, token_hash

TOKEN = "s3cret-token-for-tests-only"
HEALTH = ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready")


@pytest.fixture(scope="module")
def guarded(
    tiny_bundles: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    running = start_server(
        tiny_bundles, tmp_path_factory.mktemp("auth-logs"), AUTH_TOKEN_HASH=token_hash(TOKEN)
    )
    yield running
    assert running.stop() == 0, running.log()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_hash_is_sha256_of_the_token() -> None:
    assert token_hash(TOKEN) == hashlib.sha256(TOKEN.encode()).hexdigest()


@pytest.mark.parametrize(
    "header,token",
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic abc", None),
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("  Bearer   abc  ", "abc"),
    ],
)
def test_bearer_header_parsing(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_health_probes_stay_open(guarded: RunningServer) -> None:
    for path in HEALTH:
        assert guarded.get(path).status_code == 200, path


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("wrong"),
        bearer(TOKEN + "x"),
        bearer(TOKEN[:-1]),
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
    ],
)
def test_requests_without_the_right_token_are_401(
    guarded: RunningServer, headers: dict[str, str]
) -> None:
    for method, path in (
        ("POST", "/classify"),
        ("POST", "/generate"),
        ("POST", "/tokenize"),
        ("GET", "/models"),
        ("GET", "/openapi.json"),
        ("GET", "/"),
    ):
        if method == "POST":
            response = guarded.post(path, json={"text": "good", "prompt": "good"}, headers=headers)
        else:
            response = guarded.get(path, headers=headers)
        assert_json_error(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), path


def test_the_right_token_is_served(guarded: RunningServer) -> None:
    assert (
        guarded.post("/classify", json={"text": "good"}, headers=bearer(TOKEN)).status_code == 200
    )
    response = guarded.post(
        "/generate", json={"prompt": "good", "n_words": 3}, headers=bearer(TOKEN)
    )
    assert response.status_code == 200
    assert guarded.get("/models", headers=bearer(TOKEN)).status_code == 200


def test_no_hash_means_no_auth(tiny_bundles: Path, tmp_path: Path) -> None:
    server = start_server(tiny_bundles, tmp_path)
    try:
        assert server.post("/classify", json={"text": "good"}).status_code == 200
    finally:
        assert server.stop() == 0


def test_a_malformed_hash_refuses_to_start(tiny_bundles: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=server_env(tiny_bundles, free_port(), AUTH_TOKEN_HASH=TOKEN),
    )
    assert result.returncode == 2
    assert "AUTH_TOKEN_HASH" in result.stderr
    assert TOKEN not in result.stderr + result.stdout  # the token pasted by mistake is not echoed
