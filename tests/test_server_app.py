"""`create_app` in-process (Falcon's test client): the pieces that HTTP tests cannot reach.

The wire behaviour is tested over real HTTP in test_server_http.py; here: the standalone path
(no gunicorn: load + background warm-up), the catch-all 500 mapping, and the spec's live limits.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import falcon
import falcon.testing
import pytest

from server.app import create_app
from server.config import Settings


@pytest.fixture(scope="module")
def settings(tiny_bundles: Path) -> Settings:
    return Settings(
        model_dir=tiny_bundles,
        max_n_words=33,
        max_n_samples=4,
        max_batch_texts=7,
        max_text_chars=999,
    )


@pytest.fixture(scope="module")
def client(settings: Settings) -> falcon.testing.TestClient:
    app = create_app(settings)

    class Boom:
        """A resource with a bug, to drive the catch-all like any unforeseen fault would."""

        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            raise KeyError("secret internal detail")

    app.add_route("/boom", Boom())
    return falcon.testing.TestClient(app)


def test_standalone_app_warms_up_in_the_background(client: falcon.testing.TestClient) -> None:
    deadline = time.monotonic() + 30
    while client.simulate_get("/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    result = client.simulate_post("/classify", json={"text": "fine"})
    assert result.status_code == 200


def test_unexpected_errors_are_500_json_and_logged(
    client: falcon.testing.TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    logging.getLogger("server").propagate = True  # logs.configure may have turned it off
    with caplog.at_level(logging.ERROR, logger="server.errors"):
        result = client.simulate_get("/boom")
    assert result.status_code == 500
    assert result.headers["content-type"].startswith("application/json")
    assert set(result.json) == {"title", "description"}
    assert "secret internal detail" not in result.text and "Traceback" not in result.text
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)  # for us


def test_spec_states_this_deployments_limits(client: falcon.testing.TestClient) -> None:
    schemas = client.simulate_get("/openapi.json").json["components"]["schemas"]
    generate = schemas["GenerateRequest"]["properties"]
    assert generate["n_words"]["maximum"] == 33
    assert generate["n_samples"]["maximum"] == 4
    assert schemas["ClassifyRequest"]["properties"]["texts"]["maxItems"] == 7
    assert schemas["Text"]["maxLength"] == 999
    # ... and the server enforces exactly those numbers.
    ok = client.simulate_post("/generate", json={"prompt": "a", "n_words": 33, "n_samples": 4})
    assert ok.status_code == 200
    over = client.simulate_post("/generate", json={"prompt": "a", "n_words": 34})
    assert over.status_code == 400
    assert client.simulate_post("/classify", json={"texts": ["a"] * 8}).status_code == 400
    assert client.simulate_post("/classify", json={"text": "a" * 1000}).status_code == 400
