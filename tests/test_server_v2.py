"""Open Inference Protocol (KServe v2): driven by a real v2 client library (tritonclient[http],
binary and JSON tensors) and by raw requests shaped as the protocol's spec, against gunicorn."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from server_harness import RunningServer, SchemaChecker, assert_no_traceback, start_server
from tritonclient.utils import InferenceServerException

from server.http.auth import token_hash

CLASSIFIER, LM, VERSION = "imdb-sentiment", "imdb-lm", "tiny-test"
TEXTS = [
    "The acting was wonderful and the plot felt great.",
    "Every scene was dreadful; a waste of time.",
    "Überraschend gut, trotz allem.",
]


@pytest.fixture(scope="module")
def server(tiny_bundles: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        tiny_bundles,
        tmp_path_factory.mktemp("v2-logs"),
        MAX_BATCH_TEXTS="8",
        MAX_N_SAMPLES="3",
        MAX_TEXT_CHARS="2000",
        MICROBATCH="false",
    )
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(url=server.base_url.removeprefix("http://"))
    yield triton
    triton.close()


@pytest.fixture(scope="module")
def spec(server: RunningServer) -> SchemaChecker:
    return SchemaChecker(server.get("/openapi.json").json())


def text_input(texts: list[str], binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(
        np.array([t.encode() for t in texts], dtype=np.object_), binary_data=binary
    )
    return tensor


def classify_plain(server: RunningServer, texts: list[str]) -> list[dict[str, Any]]:
    return server.post("/classify", json={"texts": texts}).json()["results"]


# ------------------------------------------------------------------------ with tritonclient
def test_health_and_metadata_through_tritonclient(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(CLASSIFIER) and client.is_model_ready(LM, VERSION)
    assert not client.is_model_ready("no-such-model")
    server_meta = client.get_server_metadata()
    assert server_meta["name"] == "fastai-onnx-serve" and server_meta["extensions"] == []
    meta = client.get_model_metadata(CLASSIFIER)
    assert meta["versions"] == [VERSION] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {
        "label": [-1],
        "probabilities": [-1, 2],
    }
    with pytest.raises(InferenceServerException, match="no model 'nope'"):
        client.get_model_metadata("nope")


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_classify_through_tritonclient_matches_classify(
    server: RunningServer, client: httpclient.InferenceServerClient, binary: bool
) -> None:
    outputs = [
        httpclient.InferRequestedOutput("label", binary_data=binary),
        httpclient.InferRequestedOutput("probabilities", binary_data=binary),
    ]
    result = client.infer(
        CLASSIFIER, [text_input(TEXTS, binary)], outputs=outputs, request_id="req-1"
    )
    response = result.get_response()
    assert response["model_name"] == CLASSIFIER and response["model_version"] == VERSION
    assert response["id"] == "req-1"
    probabilities = result.as_numpy("probabilities")
    labels = [
        label.decode() if isinstance(label, bytes) else label
        for label in result.as_numpy("label").tolist()
    ]
    assert probabilities.shape == (3, 2) and probabilities.dtype == np.float32
    expected = classify_plain(server, TEXTS)
    assert labels == [r["label"] for r in expected]
    for row, plain in zip(probabilities, expected, strict=True):
        assert row.tolist() == pytest.approx(
            [plain["probabilities"][k] for k in ("neg", "pos")], abs=2e-6
        )


def test_default_outputs_are_all_outputs_in_binary(
    client: httpclient.InferenceServerClient,
) -> None:
    """tritonclient without `outputs` asks for every output as binary (binary_data_output)."""
    result = client.infer(CLASSIFIER, [text_input(TEXTS[:2], True)])
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == ["label", "probabilities"]
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    assert result.as_numpy("probabilities").sum(axis=1) == pytest.approx([1, 1], abs=1e-5)


def test_generate_through_tritonclient_matches_generate(
    server: RunningServer, client: httpclient.InferenceServerClient
) -> None:
    fields = {"n_words": 6, "temperature": 0.8, "seed": 11}
    result = client.infer(
        LM,
        [text_input(["My favorite part was when"], True)],
        parameters=fields,
        outputs=[httpclient.InferRequestedOutput("text", binary_data=False)],
    )
    via_v2 = [t.decode() if isinstance(t, bytes) else t for t in result.as_numpy("text").tolist()]
    plain = server.post("/generate", json={"prompt": "My favorite part was when", **fields})
    assert via_v2 == plain.json()["samples"]


def test_invalid_requests_raise_the_servers_message(
    client: httpclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException, match="must not be empty"):
        client.infer(CLASSIFIER, [text_input(["ok", "  "], True)])
    with pytest.raises(InferenceServerException, match="1 to 8 texts"):
        client.infer(CLASSIFIER, [text_input(["a"] * 9, False)])
    with pytest.raises(InferenceServerException, match="n_words"):
        client.infer(LM, [text_input(["hi"], True)], parameters={"n_words": 0})


# ------------------------------------------------------------------------ raw, per the spec
def infer(
    server: RunningServer, body: Any, path: str = f"/v2/models/{CLASSIFIER}/infer", **kwargs: Any
) -> requests.Response:
    if isinstance(body, bytes):
        return server.post(path, data=body, **kwargs)
    return server.post(path, json=body, **kwargs)


def text_tensor(data: Any, shape: list[int]) -> dict[str, Any]:
    return {"name": "text", "datatype": "BYTES", "shape": shape, "data": data}


def test_spec_shaped_requests(server: RunningServer, spec: SchemaChecker) -> None:
    nested = infer(
        server,
        {
            "inputs": [text_tensor([["Great film."], ["Awful film."]], [2, 1])],
            "outputs": [{"name": "label"}],
        },
    )
    assert nested.status_code == 200, nested.text
    body = nested.json()
    assert spec.errors(body, spec.response_schema("/v2/models/{name}/infer", "post", 200)) == []
    assert [o["name"] for o in body["outputs"]] == ["label"]
    assert body["outputs"][0]["shape"] == [2] and len(body["outputs"][0]["data"]) == 2
    assert "id" not in body

    versioned = infer(
        server,
        {"id": "x", "inputs": [text_tensor(["Fine."], [1])]},
        path=f"/v2/models/{CLASSIFIER}/versions/{VERSION}/infer",
    )
    assert versioned.status_code == 200 and versioned.json()["id"] == "x"
    for path, schema_path in (
        ("/v2", "/v2"),
        ("/v2/health/live", "/v2/health/live"),
        ("/v2/health/ready", "/v2/health/ready"),
        (f"/v2/models/{LM}", "/v2/models/{name}"),
        (f"/v2/models/{LM}/ready", "/v2/models/{name}/ready"),
    ):
        response = server.get(path)
        assert response.status_code == 200, path
        assert spec.errors(response.json(), spec.response_schema(schema_path, "get", 200)) == []
    assert server.get("/v2/health/live").json() == {"live": True}
    assert server.get(f"/v2/models/{LM}/ready").json() == {"name": LM, "ready": True}


def binary_body(
    texts: list[bytes], declared: int | None = None, extra: bytes = b""
) -> tuple[bytes, dict[str, str]]:
    raw = b"".join(struct.pack("<I", len(t)) + t for t in texts) + extra
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [len(texts)],
                    "parameters": {
                        "binary_data_size": declared if declared is not None else len(raw)
                    },
                }
            ]
        }
    ).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}


def test_binary_extension_by_hand(server: RunningServer) -> None:
    body, headers = binary_body([b"Great film.", "Überraschend gut.".encode()])
    response = infer(server, body, headers={**headers, "Content-Type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    assert [o["shape"] for o in response.json()["outputs"]] == [[2], [2, 2]]


LONG = "x" * 2001
ERRORS: list[tuple[str, Any, int, str]] = [
    ("not JSON", b"{'inputs': []}", 400, "not valid JSON"),
    ("array body", b"[]", 400, "must be an object"),
    ("no inputs", {}, 400, "exactly one tensor"),
    ("two inputs", {"inputs": [text_tensor(["a"], [1])] * 2}, 400, "exactly one tensor"),
    ("wrong name", {"inputs": [{**text_tensor(["a"], [1]), "name": "x"}]}, 400, "named 'text'"),
    ("wrong datatype", {"inputs": [{**text_tensor([1], [1]), "datatype": "INT64"}]}, 400, "BYTES"),
    ("shape mismatch", {"inputs": [text_tensor(["a", "b"], [3])]}, 400, "3 elements"),
    ("bad shape", {"inputs": [text_tensor(["a", "b"], [1, 2])]}, 400, "[n] or [n, 1]"),
    ("negative shape", {"inputs": [text_tensor(["a"], [-1])]}, 400, "non-negative"),
    ("bool shape", {"inputs": [text_tensor(["a"], [True])]}, 400, "non-negative"),
    ("number element", {"inputs": [text_tensor([5], [1])]}, 400, "must be a string"),
    ("empty text", {"inputs": [text_tensor([""], [1])]}, 400, "must not be empty"),
    ("long text", {"inputs": [text_tensor([LONG], [1])]}, 400, "limit is 2000"),
    ("too many", {"inputs": [text_tensor(["a"] * 9, [9])]}, 400, "1 to 8 texts"),
    ("zero texts", {"inputs": [text_tensor([], [0])]}, 400, "1 to 8 texts"),
    (
        "no data",
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}]},
        400,
        "needs 'data'",
    ),
    (
        "deep data",
        {"inputs": [text_tensor([[[[[[[[[[["a"]]]]]]]]]]], [1])]},
        400,
        "nested too deeply",
    ),
    ("unknown key", {"inputs": [text_tensor(["a"], [1])], "extra": 1}, 400, "Unknown field"),
    ("id not string", {"id": 5, "inputs": [text_tensor(["a"], [1])]}, 400, "'id'"),
    (
        "unknown output",
        {"inputs": [text_tensor(["a"], [1])], "outputs": [{"name": "x"}]},
        400,
        "no output 'x'",
    ),
    (
        "output twice",
        {"inputs": [text_tensor(["a"], [1])], "outputs": [{"name": "label"}, {"name": "label"}]},
        400,
        "twice",
    ),
    (
        "bad binary flag",
        {"inputs": [text_tensor(["a"], [1])], "parameters": {"binary_data_output": "yes"}},
        400,
        "boolean",
    ),
]


@pytest.mark.parametrize("case,body,status,message", ERRORS, ids=[c[0] for c in ERRORS])
def test_invalid_requests_get_v2_errors(
    server: RunningServer, spec: SchemaChecker, case: str, body: Any, status: int, message: str
) -> None:
    response = infer(server, body)
    assert response.status_code == status, response.text
    assert_no_traceback(response.text)
    error = response.json()
    assert spec.errors(error, spec.response_schema("/v2/models/{name}/infer", "post", status)) == []
    assert set(error) == {"error"} and message in error["error"], error


def test_binary_framing_errors(server: RunningServer) -> None:
    for body, headers, message in (
        (*binary_body([b"ok"], declared=99), "declares 99 bytes"),
        (*binary_body([b"\xff\xfe"]), "not valid UTF-8"),
        (*binary_body([b"ok"], extra=b"\x01"), "ends inside an element length"),
        (b"{}", {"Inference-Header-Content-Length": "5000"}, "the body has 2 bytes"),
        (b"{}", {"Inference-Header-Content-Length": "two"}, "must be an integer"),
    ):
        response = infer(server, body, headers=headers)
        assert response.status_code == 400, (message, response.text)
        assert message in response.json()["error"]


def test_routing_and_media_errors(server: RunningServer) -> None:
    ok = {"inputs": [text_tensor(["a"], [1])]}
    missing = infer(server, ok, path="/v2/models/nope/infer")
    assert missing.status_code == 404 and "no model 'nope'" in missing.json()["error"]
    wrong_version = infer(server, ok, path=f"/v2/models/{CLASSIFIER}/versions/9/infer")
    assert wrong_version.status_code == 404 and "version '9'" in wrong_version.json()["error"]
    text_plain = infer(server, b"hello", headers={"Content-Type": "text/plain"})
    assert text_plain.status_code == 415 and set(text_plain.json()) == {"error"}
    gzip = infer(server, b"{}", headers={"Content-Encoding": "gzip"})
    assert gzip.status_code == 415
    too_big = infer(server, b"{" + b" " * 2_000_000 + b"}")
    assert too_big.status_code == 413 and set(too_big.json()) == {"error"}
    unknown_route = server.get("/v2/nothing/here")
    assert unknown_route.status_code == 404 and set(unknown_route.json()) == {"error"}
    wrong_method = server.get(f"/v2/models/{CLASSIFIER}/infer")
    assert wrong_method.status_code == 405 and set(wrong_method.json()) == {"error"}
    # Outside /v2 the project's own error shape is unchanged.
    assert set(server.get("/nothing").json()) == {"title", "description"}


def test_lm_generation_parameters(server: RunningServer) -> None:
    body = {
        "inputs": [text_tensor(["The film", "The plot"], [2])],
        "parameters": {"n_words": 5, "seed": 3, "temperature": 0},
    }
    first = infer(server, body, path=f"/v2/models/{LM}/infer")
    assert first.status_code == 200, first.text
    samples = first.json()["outputs"][0]["data"]
    assert len(samples) == 2 and samples[0].startswith("The film")
    assert infer(server, body, path=f"/v2/models/{LM}/infer").json() == first.json()
    too_many = {"inputs": [text_tensor(["a"] * 4, [4])]}
    assert infer(server, too_many, path=f"/v2/models/{LM}/infer").status_code == 400


def test_refusals_of_the_shared_layers_keep_the_v2_shape(
    tiny_bundles: Path, tmp_path: Path
) -> None:
    """Auth (and any other layer in front) answers v2 clients in the protocol's error shape;
    the v2 health probes stay open, as /healthz and /readyz do."""
    token = "s3cret-token"
    server = start_server(tiny_bundles, tmp_path, AUTH_TOKEN_HASH=token_hash(token))
    body = {"inputs": [text_tensor(["Fine."], [1])]}
    try:
        assert server.get("/v2/health/live").status_code == 200
        assert server.get("/v2/health/ready").status_code == 200
        refused = infer(server, body)
        assert refused.status_code == 401 and set(refused.json()) == {"error"}
        assert server.get(f"/v2/models/{CLASSIFIER}").status_code == 401
        assert server.get("/metrics").status_code == 401
        allowed = infer(server, body, headers={"Authorization": f"Bearer {token}"})
        assert allowed.status_code == 200, allowed.text
        triton = httpclient.InferenceServerClient(url=server.base_url.removeprefix("http://"))
        with pytest.raises(InferenceServerException) as caught:
            triton.infer(CLASSIFIER, [text_input(["Fine."], True)])
        assert caught.value.status() == "401"
        result = triton.infer(
            CLASSIFIER, [text_input(["Fine."], True)], headers={"Authorization": f"Bearer {token}"}
        )
        assert result.as_numpy("probabilities").shape == (1, 2)
        triton.close()
    finally:
        assert server.stop() == 0
