"""The HTTP API's behaviour, in process: the real app and bundles through falcon.testing (no
socket). Happy paths, the error contract, the spec and a property test over random bodies.
What needs real transport (streaming, framing, bytes on the wire) is in test_server_gunicorn.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_harness import (
    InProcessResponse,
    InProcessServer,
    SchemaChecker,
    assert_json_error,
    assert_no_traceback,
)

PROMPT = "My favorite part was when"


@pytest.fixture(scope="module")
def server(tiny_bundles: Path) -> InProcessServer:
    return InProcessServer(
        tiny_bundles,
        max_body_bytes=65536,
        max_text_chars=5000,
        max_batch_texts=16,
        max_n_words=60,
        max_n_samples=6,
    )


@pytest.fixture(scope="module")
def spec(server: InProcessServer) -> SchemaChecker:
    response = server.get("/openapi.json")
    assert response.status_code == 200
    return SchemaChecker(response.json())


@pytest.fixture(scope="module")
def manifests(tiny_bundles: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(tiny_bundles.glob("*/manifest.json")):
        manifest = json.loads(path.read_text())
        found[manifest["task"]] = manifest
    assert set(found) == {"classify", "generate"}
    return found


def assert_matches_spec(
    spec: SchemaChecker, path: str, method: str, response: InProcessResponse
) -> None:
    schema = spec.response_schema(path, method, response.status_code)
    assert schema is not None, f"{method} {path} -> {response.status_code} is not documented"
    problems = spec.errors(response.json(), schema)
    assert not problems, problems


def post_json(server: InProcessServer, path: str, body: Any) -> InProcessResponse:
    return server.post(path, json=body)


# ------------------------------------------------------------------------------ happy paths
def test_health_and_readiness(server: InProcessServer, spec: SchemaChecker) -> None:
    for path in ("/healthz", "/readyz"):
        response = server.get(path)
        assert response.status_code == 200
        assert_matches_spec(spec, path, "get", response)


def test_classify_single(
    server: InProcessServer, spec: SchemaChecker, manifests: dict[str, dict[str, Any]]
) -> None:
    response = post_json(server, "/classify", {"text": "I loved this movie, the acting was great"})
    assert response.status_code == 200, response.text
    assert_matches_spec(spec, "/classify", "post", response)
    body = response.json()
    manifest = manifests["classify"]
    assert body["model"] == f"{manifest['name']}@{manifest['version']}"
    assert list(body["probabilities"]) == manifest["labels"]
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)


def test_classify_batch_keeps_order_and_matches_singles(
    server: InProcessServer, spec: SchemaChecker, manifests: dict[str, dict[str, Any]]
) -> None:
    texts = [
        "Great film.",
        "Terrible, boring and far too long. I want my money back!",
        "An average movie with a few good moments, " * 20,
        "meh",
        "Great film.",
    ]
    response = post_json(server, "/classify", {"texts": texts})
    assert response.status_code == 200, response.text
    assert_matches_spec(spec, "/classify", "post", response)
    results = response.json()["results"]
    assert len(results) == len(texts)
    assert results[0] == results[4]  # same text, same batch: identical
    # Permuting the batch permutes the answers exactly (same padded tensor values, same scales).
    reversed_results = post_json(server, "/classify", {"texts": texts[::-1]}).json()["results"]
    for result, mirrored in zip(results, reversed_results[::-1], strict=True):
        for label, p in result["probabilities"].items():
            assert mirrored["probabilities"][label] == pytest.approx(p, abs=2e-6)
    # Against single requests: int8 dynamic quantization scales activations per call, so each
    # answer may move by the int8-vs-fp32 error the export measured, in both directions.
    measured = manifests["classify"]["metrics"]["quantization"][
        "max_abs_diff_probabilities_int8_vs_fp32"
    ]
    tolerance = 2 * measured + 0.01
    for text, result in zip(texts, results, strict=True):
        single = post_json(server, "/classify", {"text": text}).json()
        for label, p in single["probabilities"].items():
            assert result["probabilities"][label] == pytest.approx(p, abs=tolerance)


def test_generate_shape_and_prompt(server: InProcessServer, spec: SchemaChecker) -> None:
    response = post_json(
        server, "/generate", {"prompt": PROMPT, "n_words": 12, "n_samples": 3, "seed": 1}
    )
    assert response.status_code == 200, response.text
    assert_matches_spec(spec, "/generate", "post", response)
    samples = response.json()["samples"]
    assert len(samples) == 3
    for sample in samples:
        assert sample.startswith(PROMPT)  # fastai's predict returns the prompt and what follows
        assert len(sample) > len(PROMPT)
        for hidden in ("xxbos", "xxmaj", "xxunk", "xxpad", "xxup"):
            assert hidden not in sample


def test_generate_seed_reproduces(server: InProcessServer) -> None:
    body = {
        "prompt": PROMPT,
        "n_words": 20,
        "n_samples": 2,
        "temperature": 1.2,
        "top_k": 50,
        "top_p": 0.95,
    }
    first = post_json(server, "/generate", {**body, "seed": 123}).json()["samples"]
    again = post_json(server, "/generate", {**body, "seed": 123}).json()["samples"]
    other = post_json(server, "/generate", {**body, "seed": 124}).json()["samples"]
    assert first == again
    assert first != other


def test_generate_greedy_is_deterministic_without_seed(server: InProcessServer) -> None:
    body = {"prompt": PROMPT, "n_words": 15, "n_samples": 2, "temperature": 0}
    first = post_json(server, "/generate", body).json()["samples"]
    assert first[0] == first[1]
    assert post_json(server, "/generate", body).json()["samples"] == first


def test_tokenize(server: InProcessServer, spec: SchemaChecker) -> None:
    response = post_json(server, "/tokenize", {"text": "Hello WORLD, isn't it zzyzxqwv?"})
    assert response.status_code == 200, response.text
    assert_matches_spec(spec, "/tokenize", "post", response)
    body = response.json()
    assert body["tokens"][0] == "xxbos" and len(body["tokens"]) == len(body["ids"])
    assert "xxmaj" in body["tokens"] and "xxup" in body["tokens"]
    assert "xxunk" in body["tokens"]  # the made-up word is not in any vocabulary


def test_models_lists_manifests(
    server: InProcessServer, spec: SchemaChecker, manifests: dict[str, dict[str, Any]]
) -> None:
    response = server.get("/models")
    assert response.status_code == 200
    assert_matches_spec(spec, "/models", "get", response)
    listed = {entry["task"]: entry for entry in response.json()["models"]}
    for task, manifest in manifests.items():
        entry = listed[task]
        assert (entry["name"], entry["version"]) == (manifest["name"], manifest["version"])
        assert entry["labels"] == manifest.get("labels", [])
        assert entry["metrics"] == json.loads(json.dumps(manifest.get("metrics", {})))


def test_index_page(server: InProcessServer) -> None:
    response = server.get("/")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    page = response.text
    assert page.count("<li>") == 5 and page.count(PROMPT) >= 6
    assert 'id="classify-form"' in page and 'id="generate-form"' in page


def concrete_path(spec: SchemaChecker, path: str, operation: dict[str, Any]) -> str:
    """A documented path with each {parameter} set to the first value its schema allows (the
    spec lists this deployment's model names and versions)."""
    for parameter in operation.get("parameters", []):
        parameter = spec.resolve(parameter)
        path = path.replace("{" + parameter["name"] + "}", str(parameter["schema"]["enum"][0]))
    return path


def test_every_documented_operation_exists(server: InProcessServer, spec: SchemaChecker) -> None:
    for path, operations in spec.spec["paths"].items():
        for method, operation in operations.items():
            kwargs = {"json": {"text": "ok", "prompt": "ok"}} if method == "post" else {}
            response = server.request(
                method.upper(), concrete_path(spec, path, operation), **kwargs
            )
            assert response.status_code not in (404, 405), (method, path)
            assert str(response.status_code) in operations[method]["responses"], (method, path)


# ------------------------------------------------------------------------------ errors
LONG = "x" * 5001


ERROR_CASES: list[tuple[str, str, Any, int]] = [
    # path, description, JSON body (or raw bytes), expected status
    ("/classify", "missing field", {}, 400),
    ("/classify", "unknown field", {"text": "a", "lang": "en"}, 400),
    ("/classify", "text and texts", {"text": "a", "texts": ["b"]}, 400),
    ("/classify", "text not a string", {"text": 5}, 400),
    ("/classify", "text null", {"text": None}, 400),
    ("/classify", "empty text", {"text": ""}, 400),
    ("/classify", "whitespace text", {"text": " \n\t "}, 400),
    ("/classify", "text too long", {"text": LONG}, 400),
    ("/classify", "texts not a list", {"texts": "abc"}, 400),
    ("/classify", "texts empty", {"texts": []}, 400),
    ("/classify", "too many texts", {"texts": ["a"] * 17}, 400),
    ("/classify", "a text in the batch empty", {"texts": ["good", ""]}, 400),
    ("/classify", "array body", ["a"], 400),
    ("/classify", "lone surrogate", b'{"text": "a\\ud800"}', 400),
    ("/generate", "missing prompt", {"n_words": 3}, 400),
    ("/generate", "n_words zero", {"prompt": "a", "n_words": 0}, 400),
    ("/generate", "n_words over the limit", {"prompt": "a", "n_words": 61}, 400),
    ("/generate", "n_words float", {"prompt": "a", "n_words": 2.0}, 400),
    ("/generate", "n_words bool", {"prompt": "a", "n_words": True}, 400),
    ("/generate", "n_words string", {"prompt": "a", "n_words": "5"}, 400),
    ("/generate", "n_samples over the limit", {"prompt": "a", "n_samples": 7}, 400),
    ("/generate", "negative temperature", {"prompt": "a", "temperature": -1}, 400),
    ("/generate", "huge temperature", {"prompt": "a", "temperature": 1e300}, 400),
    ("/generate", "top_p zero", {"prompt": "a", "top_p": 0}, 400),
    ("/generate", "top_p above one", {"prompt": "a", "top_p": 1.01}, 400),
    ("/generate", "top_k zero", {"prompt": "a", "top_k": 0}, 400),
    ("/generate", "negative seed", {"prompt": "a", "seed": -1}, 400),
    ("/generate", "huge seed", {"prompt": "a", "seed": 2**64}, 400),
    ("/generate", "no_unk not a bool", {"prompt": "a", "no_unk": "yes"}, 400),
    ("/generate", "stream not a bool", {"prompt": "a", "stream": 1}, 400),
    ("/generate", "prompt too long", {"prompt": LONG}, 400),
    ("/generate", "NaN", b'{"prompt": "a", "temperature": NaN}', 400),
    ("/generate", "Infinity", b'{"prompt": "a", "temperature": Infinity}', 400),
    ("/generate", "overflowing float", b'{"prompt": "a", "temperature": 1e999}', 400),
    ("/generate", "huge integer", b'{"prompt": "a", "n_words": 1' + b"0" * 5000 + b"}", 400),
    ("/generate", "duplicate key", b'{"prompt": "a", "prompt": "b"}', 400),
    ("/tokenize", "unknown model", {"text": "a", "model": "nope"}, 404),
    ("/classify", "unknown model", {"text": "a", "model": "nope"}, 404),
    ("/generate", "unknown model", {"prompt": "a", "model": "nope"}, 404),
    ("/classify", "model not a string", {"text": "a", "model": ["x"]}, 400),
    ("/tokenize", "missing text", {"model": None}, 400),
    ("/classify", "syntax error", b'{"text": "a",}', 400),
    ("/classify", "truncated", b'{"text": "a', 400),
    ("/classify", "empty body", b"", 400),
    ("/classify", "not UTF-8", b'{"text": "caf\xe9"}', 400),
    ("/classify", "deep nesting", b'{"text": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", 400),
    ("/classify", "single quotes", b"{'text': 'a'}", 400),
]


@pytest.mark.parametrize(
    "path,case,body,status", ERROR_CASES, ids=[f"{path}-{case}" for path, case, _, _ in ERROR_CASES]
)
def test_invalid_input_is_4xx_json(
    server: InProcessServer, spec: SchemaChecker, path: str, case: str, body: Any, status: int
) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = server.post(path, data=data, headers={"Content-Type": "application/json"})
    assert_json_error(response, status)
    assert_matches_spec(spec, path, "post", response)


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
def test_non_json_is_415(server: InProcessServer, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = server.post("/classify", data=b'{"text": "good"}', headers=headers)
    assert_json_error(response, 415)


def test_body_over_limit_is_413(server: InProcessServer) -> None:
    body = json.dumps({"texts": ["word " * 1000] * 14}).encode()  # 70 KB > 64 KiB
    response = server.post("/classify", data=body, headers={"Content-Type": "application/json"})
    assert_json_error(response, 413)


def test_unknown_route_is_404_json(server: InProcessServer) -> None:
    for path in ("/nope", "/classify/extra", "/v1/generate"):
        assert_json_error(server.get(path), 404)
        assert_json_error(server.post(path, json={"text": "a"}), 404)


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/classify"),
        ("GET", "/generate"),
        ("PUT", "/classify"),
        ("DELETE", "/tokenize"),
        ("POST", "/healthz"),
        ("POST", "/models"),
    ],
)
def test_wrong_method_is_405_json(server: InProcessServer, method: str, path: str) -> None:
    response = server.request(method, path)
    assert_json_error(response, 405)
    assert "Allow" in response.headers


def test_errors_are_json_whatever_the_client_accepts(server: InProcessServer) -> None:
    response = server.get("/nope", headers={"Accept": "application/xml"})
    assert_json_error(response, 404)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.text(max_size=40)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)


FIELDS = [
    "text",
    "texts",
    "prompt",
    "n_words",
    "n_samples",
    "temperature",
    "top_k",
    "top_p",
    "seed",
    "no_unk",
    "stream",
    "model",
    "extra",
]


SMALL_VALUES = {
    "n_words": st.integers(-3, 70),
    "n_samples": st.integers(-1, 8),
    "temperature": st.floats(-1, 12),
    "top_p": st.floats(-0.5, 1.5),
    "top_k": st.none() | st.integers(-1, 3000),
    "texts": st.lists(st.text(max_size=30), max_size=20),
}


@st.composite
def request_bodies(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique=True))
    return {
        name: draw(
            st.one_of(SMALL_VALUES[name], JSON_VALUES) if name in SMALL_VALUES else JSON_VALUES
        )
        for name in names
    }


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(["/classify", "/generate", "/tokenize"]), body=request_bodies())
def test_generated_bodies_never_cause_a_5xx(
    server: InProcessServer, spec: SchemaChecker, path: str, body: dict[str, Any]
) -> None:
    response = server.post(path, json=body)
    assert response.status_code in (200, 400), (body, response.status_code, response.text[:200])
    assert_no_traceback(response.text)
    if response.headers["Content-Type"].startswith("application/json"):
        assert_matches_spec(spec, path, "post", response)


def test_app_survived_the_abuse(server: InProcessServer) -> None:
    """Runs after the error cases: the same runtime still answers."""
    assert server.get("/readyz").status_code == 200
    assert server.post("/classify", json={"text": "still fine"}).status_code == 200


def test_v2_server_metadata_answers_with_and_without_the_slash(server: InProcessServer) -> None:
    """`GET /v2/` is the same resource as `GET /v2` (the REST spec's server metadata)."""
    plain, slashed = server.get("/v2"), server.get("/v2/")
    assert (plain.status_code, slashed.status_code) == (200, 200)
    assert slashed.json() == plain.json()
    assert set(plain.json()) == {"name", "version", "extensions"}
    assert server.get("/v2//").status_code == 404  # only the one spelling more, nothing looser
