"""What only real transport shows, against `python -m server` (gunicorn) on the tiny bundles:
a stream of server-sent events as sent, body limits on bytes actually read (chunked), and
framing that lies or breaks. The API's behaviour is tested in process (test_server_resources.py).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import (
    RunningServer,
    assert_json_error,
    assert_no_traceback,
    parse_sse,
    start_server,
)

PROMPT = "My favorite part was when"


@pytest.fixture(scope="module")
def server(tiny_bundles: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        tiny_bundles,
        tmp_path_factory.mktemp("server-logs"),
        MAX_BODY_BYTES="65536",
        MAX_TEXT_CHARS="5000",
        MAX_BATCH_TEXTS="16",
        MAX_N_WORDS="60",
        MAX_N_SAMPLES="6",
    )
    yield running
    assert running.stop() == 0, running.log()


def test_generate_stream_events(server: RunningServer) -> None:
    body = {"prompt": PROMPT, "n_words": 25, "n_samples": 2, "seed": 7}
    with server.post("/generate", json={**body, "stream": True}, stream=True) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = response.content.decode("utf-8")
    events = parse_sse(text)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"word"}
    assert len(kinds) > 2
    done = events[-1][1]
    plain = server.post("/generate", json=body).json()
    assert done == plain  # same seed: streaming changes the transport, not the samples
    for index, sample in enumerate(done["samples"]):
        words = "".join(data["text"] for kind, data in events[:-1] if data["sample"] == index)
        assert words.strip() and sample.endswith(words)


def test_chunked_body_over_limit_is_413(server: RunningServer) -> None:
    """No Content-Length: the limit is enforced on the bytes actually read."""

    def chunks() -> Iterator[bytes]:
        yield b'{"text": "'
        for _ in range(100):
            yield b"a" * 1000
        yield b'"}'

    response = server.post("/classify", data=chunks(), headers={"Content-Type": "application/json"})
    assert "Content-Length" not in response.request.headers
    assert_json_error(response, 413)


def test_lying_content_length_is_not_a_500(server: RunningServer) -> None:
    """A Content-Length larger than the bytes sent, then the client closes: no crash, no 500."""
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\nConnection: close\r\n\r\n{"text": "a"}'
        )
        sock.shutdown(socket.SHUT_WR)
        reply = sock.recv(65536).decode("latin-1")
    assert reply == "" or not reply.startswith("HTTP/1.1 5"), reply[:200]
    assert server.get("/healthz").status_code == 200


def test_broken_chunked_framing_is_not_a_500(server: RunningServer) -> None:
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b'5\r\n{"tex\r\nzz\r\nnot hex\r\n\r\n'
        )
        reply = sock.recv(65536).decode("latin-1")
    status_line = reply.split("\r\n", 1)[0]
    assert status_line.startswith("HTTP/1.1 4"), reply[:300]
    assert_no_traceback(reply)


def test_server_survived_the_abuse(server: RunningServer) -> None:
    """Runs after the framing abuses: the worker is the same, alive, and logged no traceback."""
    assert server.get("/readyz").status_code == 200
    assert server.post("/classify", json={"text": "still fine"}).status_code == 200
    assert "Traceback" not in server.log()
    assert_no_traceback(server.post("/generate", json={"prompt": "a", "n_words": 2}).text)
