"""Fuzzing the real app in process (falcon.testing / schemathesis's WSGI transport, no socket:
what reaches the bytes on the wire is in test_server_gunicorn.py): schemathesis from the
server's own OpenAPI document, then hypothesis on
what a schema cannot express (bytes that are not UTF-8, numbers JSON can write but floats cannot
hold, NaN/Infinity, nesting depth, length limits) and on the tokenizer/generation parameters.

The bar (issue 6): >= 2,000 generated requests in all, zero 5xx, zero hangs (every request has
a timeout; one that runs out fails the test), and every answer as the spec documents it.
Each test counts what it sent and checks it sent what it promised.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from server_harness import InProcessResponse, InProcessServer, SchemaChecker, assert_no_traceback

REQUEST_TIMEOUT_S = 30  # the app's own deadline: a request past it is a 504, and fails a test
LIMITS = {
    "MAX_BODY_BYTES": "65536",
    "MAX_TEXT_CHARS": "3000",
    "MAX_BATCH_TEXTS": "8",
    "MAX_N_WORDS": "20",
    "MAX_N_SAMPLES": "3",
}
SETTINGS = {name.lower(): int(value) for name, value in LIMITS.items()}
SETTINGS["request_timeout_s"] = REQUEST_TIMEOUT_S
# Examples per operation and generation mode; operations without inputs yield what exists.
EXAMPLES = {"POST": int(os.environ.get("FUZZ_EXAMPLES", "250")), "GET": 30}
MIN_SCHEMATHESIS_REQUESTS = 6 * EXAMPLES["POST"]  # 5 POST operations x 2 modes, with slack
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
FUZZ_SETTINGS = settings(
    deadline=None, database=None, derandomize=False, suppress_health_check=list(HealthCheck)
)


class ErrorRecords(logging.Handler):
    """Every ERROR the server logs while fuzzed (a fault hidden behind a 4xx shows here)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def server(tiny_bundles: Path) -> Iterator[InProcessServer]:
    errors = ErrorRecords()
    logger = logging.getLogger("server")
    logger.addHandler(errors)
    try:
        yield InProcessServer(tiny_bundles, **SETTINGS)
    finally:
        logger.removeHandler(errors)
    assert not errors.records, [r.getMessage() for r in errors.records][:5]


@pytest.fixture(scope="module")
def spec(server: InProcessServer) -> SchemaChecker:
    return SchemaChecker(server.get("/openapi.json").json())


def test_schemathesis_finds_no_5xx_and_no_undocumented_answer(server: InProcessServer) -> None:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", server.app)
    sent: dict[str, int] = {}
    took: dict[str, float] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(FUZZ_SETTINGS, max_examples=EXAMPLES.get(operation.method.upper(), 30))
            @given(case=operation.as_strategy(generation_mode=mode))
            def exchange(case: schemathesis.Case) -> None:
                response = case.call()
                sent[label] = sent.get(label, 0) + 1
                assert response.status_code < 500, (label, response.status_code, response.text)
                assert_no_traceback(response.text)
                case.validate_response(response, checks=CHECKS)

            started = time.perf_counter()
            try:
                exchange()
            except Unsatisfiable:
                if mode is GenerationMode.POSITIVE:
                    raise
                # An operation without inputs has no invalid request to make.
            took[label] = took.get(label, 0.0) + time.perf_counter() - started
    total = sum(sent.values())
    print(
        "schemathesis requests:",
        total,
        json.dumps(sent),
        json.dumps({k: round(v, 1) for k, v in took.items()}),
    )
    assert total >= MIN_SCHEMATHESIS_REQUESTS, sent
    assert server.get("/readyz").status_code == 200


# ------------------------------------------------------------------ hand-made hostile bodies
INVALID_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"\xc3\x28",
    b"\x80",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
]
BAD_CONSTANTS = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"nan",
    b"inf",
    b"1e999",
    b"-1e999",
    b"1" + b"0" * 5000,
    b"-" + b"9" * 4400,
    b"1E+400",
    b"0x10",
    b"+1",
    b".5",
    b"01",
]
NUMERIC_FIELDS = ["n_words", "n_samples", "temperature", "top_k", "top_p", "seed"]


def post_raw(
    server: InProcessServer, path: str, body: bytes, content_type: str = "application/json"
) -> InProcessResponse:
    return server.post(path, data=body, headers={"Content-Type": content_type})


def assert_refused_cleanly(
    spec: SchemaChecker,
    path: str,
    response: InProcessResponse,
    allowed: tuple[int, ...] = (400, 413),
) -> None:
    assert response.status_code in allowed, (response.status_code, response.text[:300])
    assert_no_traceback(response.text)
    schema = spec.response_schema(path, "post", response.status_code)
    assert schema is not None and not spec.errors(response.json(), schema)


@st.composite
def invalid_utf8_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    path, field = draw(
        st.sampled_from([("/classify", "text"), ("/generate", "prompt"), ("/tokenize", "text")])
    )
    text = draw(st.text(max_size=40)).encode("utf-8")
    cut = draw(st.integers(0, len(text)))
    bad = draw(st.sampled_from(INVALID_UTF8))
    return path, b'{"' + field.encode() + b'": "' + text[:cut].replace(b"\\", b"").replace(
        b'"', b""
    ) + bad + text[cut:].replace(b"\\", b"").replace(b'"', b"") + b'"}'


@st.composite
def bad_number_bodies(draw: st.DrawFn) -> bytes:
    field = draw(st.sampled_from(NUMERIC_FIELDS))
    number = draw(
        st.sampled_from(BAD_CONSTANTS)
        | st.integers(2**63, 2**3000).map(lambda n: str(n).encode())
        | st.integers(-(2**3000), -1).map(lambda n: str(n).encode())
    )
    return b'{"prompt": "a", "' + field.encode() + b'": ' + number + b"}"


@st.composite
def deep_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    depth = draw(st.integers(1, 200_000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    path, field = draw(
        st.sampled_from([("/classify", "texts"), ("/generate", "prompt"), ("/classify", "text")])
    )
    nested = opener * depth + b"1" + closer * depth
    return path, b'{"' + field.encode() + b'": ' + nested + b"}"


@settings(FUZZ_SETTINGS, max_examples=120)
@given(case=invalid_utf8_bodies())
def test_invalid_utf8_is_400(
    server: InProcessServer, spec: SchemaChecker, case: tuple[str, bytes]
) -> None:
    path, body = case
    response = post_raw(server, path, body)
    assert_refused_cleanly(spec, path, response, (400,))
    assert "UTF-8" in response.json()["description"]


@settings(FUZZ_SETTINGS, max_examples=150)
@given(body=bad_number_bodies())
def test_unrepresentable_numbers_are_400(
    server: InProcessServer, spec: SchemaChecker, body: bytes
) -> None:
    assert_refused_cleanly(spec, "/generate", post_raw(server, "/generate", body), (400,))


@settings(FUZZ_SETTINGS, max_examples=60)
@given(case=deep_bodies())
def test_deep_nesting_is_refused(
    server: InProcessServer, spec: SchemaChecker, case: tuple[str, bytes]
) -> None:
    path, body = case
    assert_refused_cleanly(spec, path, post_raw(server, path, body))


@settings(FUZZ_SETTINGS, max_examples=60)
@given(
    chars=st.integers(2900, 3100),
    count=st.integers(1, 60),
    alphabet=st.sampled_from(["a", "é", "😀", " word", "<br />", "x\u0085"]),
)
def test_long_texts_and_many_texts_hit_the_limits_cleanly(
    server: InProcessServer, spec: SchemaChecker, chars: int, count: int, alphabet: str
) -> None:
    text = (alphabet * chars)[:chars]
    body = json.dumps({"texts": [text] * count}).encode()
    response = post_raw(server, "/classify", body)
    too_big = len(body) > int(LIMITS["MAX_BODY_BYTES"])
    invalid = chars > int(LIMITS["MAX_TEXT_CHARS"]) or count > int(LIMITS["MAX_BATCH_TEXTS"])
    if too_big:
        assert_refused_cleanly(spec, "/classify", response, (413,))
    elif invalid:
        assert_refused_cleanly(spec, "/classify", response, (400,))
    else:
        assert response.status_code == 200, response.text[:300]
        assert len(response.json()["results"]) == count


# ------------------------------------------------------------ tokenizer and generation inputs
TEXTS = st.text(st.characters(codec="utf-8"), min_size=1, max_size=300).filter(str.strip)
OPTIONAL_FLOAT = st.none() | st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(FUZZ_SETTINGS, max_examples=200)
@given(
    prompt=TEXTS,
    n_words=st.integers(-2, 25),
    n_samples=st.integers(-1, 4),
    temperature=st.floats(-1, 11, allow_nan=False),
    top_k=st.none() | st.integers(-1, 200),
    top_p=OPTIONAL_FLOAT,
    seed=st.none() | st.integers(-5, 2**64),
    no_unk=st.booleans(),
    stream=st.booleans(),
)
def test_generation_parameters(
    server: InProcessServer,
    spec: SchemaChecker,
    prompt: str,
    n_words: int,
    n_samples: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int | None,
    no_unk: bool,
    stream: bool,
) -> None:
    body: dict[str, Any] = {
        "prompt": prompt,
        "n_words": n_words,
        "n_samples": n_samples,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "seed": seed,
        "no_unk": no_unk,
        "stream": stream,
    }
    valid = (
        1 <= n_words <= int(LIMITS["MAX_N_WORDS"])
        and 1 <= n_samples <= int(LIMITS["MAX_N_SAMPLES"])
        and 0 <= temperature <= 10
        and (top_k is None or top_k >= 1)
        and (top_p is None or (math.isfinite(top_p) and 0 < top_p <= 1))
        and (seed is None or 0 <= seed <= 2**63 - 1)
    )
    response = server.post("/generate", json=body)
    assert_no_traceback(response.text)
    if not valid:
        assert response.status_code == 400, (body, response.status_code, response.text[:300])
        return
    assert response.status_code == 200, (body, response.text[:300])
    if stream:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert "event: done" in response.text and "event: error" not in response.text
    else:
        samples = response.json()["samples"]
        assert len(samples) == n_samples and all(s.startswith(prompt) for s in samples)


@settings(FUZZ_SETTINGS, max_examples=200)
@given(text=TEXTS)
def test_tokenizer_on_any_text(server: InProcessServer, text: str) -> None:
    response = server.post("/tokenize", json={"text": text})
    assert response.status_code == 200, (text, response.text[:300])
    body = response.json()
    assert body["tokens"][0] == "xxbos" and len(body["tokens"]) == len(body["ids"])
    classified = server.post("/classify", json={"text": text})
    assert classified.status_code == 200, (text, classified.text[:300])
    assert math.isclose(sum(classified.json()["probabilities"].values()), 1, abs_tol=1e-4)
