"""GET /metrics: our Prometheus text is read back with the reference parser (prometheus_client),
and the numbers it reports are checked against traffic we sent ourselves to a real gunicorn."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import falcon.testing
import pytest
from server_harness import (
    InProcessServer,
    RunningServer,
    Samples,
    parse,
    start_server,
    total,
    value,
)

from server.observability.metrics import Registry, format_value


# ------------------------------------------------------------------------ the format itself
def test_rendering_is_read_back_exactly_by_the_reference_parser() -> None:
    registry = Registry()
    counter = registry.counter(
        "jobs_total", "Jobs.\nSecond help line with a \\ backslash.", ("kind",)
    )
    gauge = registry.gauge("queue_depth", "Depth.")
    histogram = registry.histogram("size", "Sizes.", ("model",), buckets=(1, 5, 10))
    odd = 'quote " backslash \\ newline \n end'
    counter.inc(kind=odd)
    counter.inc(2.5, kind="plain")
    gauge.set(-3)
    for observed in (0.5, 1, 3, 7, 11, 100):
        histogram.observe(observed, model="m")
    types, samples = parse(registry.render().decode())
    assert types == {"jobs": "counter", "queue_depth": "gauge", "size": "histogram"}
    assert value(samples, "jobs_total", kind=odd) == 1
    assert value(samples, "jobs_total", kind="plain") == 2.5
    assert value(samples, "queue_depth") == -3
    # Buckets are cumulative (le is an upper bound, inclusive); +Inf equals the count.
    assert [
        value(samples, "size_bucket", model="m", le=le) for le in ("1.0", "5.0", "10.0", "+Inf")
    ] == [2, 3, 4, 6]
    assert value(samples, "size_count", model="m") == 6
    assert value(samples, "size_sum", model="m") == pytest.approx(122.5)


def test_label_names_are_enforced() -> None:
    counter = Registry().counter("x_total", "x", ("a",))
    with pytest.raises(ValueError):
        counter.inc(b="1")
    with pytest.raises(ValueError):
        counter.inc(-1, a="1")


def test_bound_series_count_as_the_labelled_calls() -> None:
    """`labels(...)` (bound once, for hot paths) and keyword labels on every call render alike."""
    rendered = []
    for bound in (False, True):
        registry = Registry()
        counter = registry.counter("hits_total", "Hits.", ("t",))
        histogram = registry.histogram("lat", "Latency.", ("t",), buckets=(0.5, 1.0))
        for t, amount, values in (("a", 1.0, [0.1, 0.7]), ("b", 2.5, [2.0]), ("a", 3.0, [0.5])):
            if bound:
                counter.labels(t=t).inc(amount)
                histogram.labels(t=t).observe_many(values)
                histogram.labels(t=t).observe(values[0])
            else:
                counter.inc(amount, t=t)
                histogram.observe_many(values, t=t)
                histogram.observe(values[0], t=t)
        rendered.append(registry.render())
    assert rendered[0] == rendered[1]
    assert b'hits_total{t="a"} 4' in rendered[1]
    with pytest.raises(ValueError):
        Registry().counter("x_total", "x", ("a",)).labels(b="1")
    with pytest.raises(ValueError):
        Registry().counter("x_total", "x", ("a",)).labels(a="1").inc(-1)


def test_concurrent_updates_are_not_lost() -> None:
    registry = Registry()
    counter = registry.counter("hits_total", "Hits.", ("t",))
    histogram = registry.histogram("lat", "Latency.", buckets=(0.5,))

    def hammer() -> None:
        for _ in range(5000):
            counter.inc(t="a")
            histogram.observe(0.1)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _, samples = parse(registry.render().decode())
    assert value(samples, "hits_total", t="a") == 40_000
    assert value(samples, "lat_count") == 40_000 == value(samples, "lat_bucket", le="0.5")


@pytest.mark.parametrize(
    "number,text",
    [
        (3.0, "3"),
        (0.25, "0.25"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
        (2**60, "1.152921504606847e+18"),
    ],
)
def test_number_spelling(number: float, text: str) -> None:
    assert format_value(number) == text


# ------------------------------------------------------------------------ the real app
@pytest.fixture(scope="module")
def server(tiny_bundles: Path) -> InProcessServer:
    """The app in process: what is counted is the app's own doing (the middleware order, the
    instrumented models); micro-batching across threads is checked over gunicorn below."""
    return InProcessServer(tiny_bundles, max_batch_texts=16, microbatch=False)


def scrape(server: InProcessServer | RunningServer) -> tuple[dict[str, str], Samples]:
    response = server.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.text)


def token_count(server: InProcessServer, text: str) -> tuple[int, int]:
    """(tokens, xxunk tokens) of a text, from the server's own /tokenize."""
    body = server.post("/tokenize", json={"text": text}).json()
    return len(body["ids"]), body["tokens"].count("xxunk")


SINGLES = [
    "The acting was wonderful and the plot felt great.",
    "Every scene was dreadful and the music felt boring.",
    "Qwzx vbnm plokij uhygt frdes zaqxsw cdevfr bgtnhy.",
]
BATCH = [
    "This movie was superb.",
    "The plot was awful.",
    "I loved it.",
    "I hated the ending.",
    "The soundtrack was moving and the night felt brilliant.",
]


@pytest.mark.filterwarnings("ignore:Unknown REQUEST_METHOD")  # sent on purpose, below
def test_metrics_count_the_traffic_we_sent(server: InProcessServer) -> None:
    _, before = scrape(server)
    classifier = "imdb-sentiment@tiny-test"
    lm = "imdb-lm@tiny-test"
    # The stream first: it is recorded when the WSGI server closes it.
    stream = server.post("/generate", json={"prompt": "The film", "n_words": 4, "stream": True})
    assert stream.status_code == 200 and "event: done" in stream.text
    labels = []
    for text in SINGLES:
        response = server.post("/classify", json={"text": text})
        assert response.status_code == 200
        labels.append(response.json()["label"])
    response = server.post("/classify", json={"texts": BATCH})
    assert response.status_code == 200
    labels += [result["label"] for result in response.json()["results"]]
    assert server.post("/classify", json={"text": ""}).status_code == 400
    assert server.post("/classify", json={"nope": 1}).status_code == 400
    assert server.get("/no/such/route").status_code == 404
    assert server.request("FROBNICATE", "/classify").status_code in (
        400,
        405,
        501,
    )
    assert (
        server.post(
            "/generate", json={"prompt": "The film", "n_words": 7, "n_samples": 3}
        ).status_code
        == 200
    )
    types, after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Requests by route template, method and status; the latency histogram sees each one.
    ok = {"endpoint": "/classify", "method": "POST", "status": "200"}
    assert delta("http_requests_total", **ok) == 4
    assert delta("http_request_duration_seconds_count", **ok) == 4
    assert delta("http_requests_total", endpoint="/classify", method="POST", status="400") == 2
    assert delta("http_requests_total", endpoint="unmatched", method="GET", status="404") == 1
    assert total(after, "http_requests_total", method="other") == 1
    assert total(after, "http_requests_total", method="FROBNICATE") == 0
    assert delta("http_requests_total", endpoint="/generate", method="POST", status="200") == 2
    assert value(after, "http_requests_in_flight") == 1  # this scrape
    # Model calls: one onnxruntime call per request (micro-batching off), rows per call.
    assert delta("model_batch_size_count", model=classifier) == 4
    assert delta("model_batch_size_sum", model=classifier) == len(SINGLES) + len(BATCH)
    assert delta("model_inference_seconds_count", model=classifier) == 4
    assert delta("model_inference_seconds_sum", model=classifier) > 0
    # Generation: 7 steps x 3 samples + 4 x 1 sampled; the LM runs prompt + n_words - 1 steps.
    assert delta("model_generated_tokens_total", model=lm) == 7 * 3 + 4
    assert delta("model_inference_seconds_count", model=lm) == 7 + 4
    assert delta("model_batch_size_sum", model=lm) == (1 + 6 * 3) + (1 + 3 * 1)
    # Data statistics of every classified text, against the server's own tokenizer.
    counts = [token_count(server, text) for text in SINGLES + BATCH]
    assert delta("model_input_tokens_count", model=classifier) == len(counts)
    assert delta("model_input_tokens_sum", model=classifier) == sum(n for n, _ in counts)
    assert delta("model_input_unk_rate_sum", model=classifier) == pytest.approx(
        sum(unk / n for n, unk in counts)
    )
    assert counts[2][1] > 0  # the made-up words really are out of vocabulary
    for label in ("neg", "pos"):
        assert delta("model_predictions_total", model=classifier, label=label) == labels.count(
            label
        )
    assert delta("model_prediction_confidence_count", model=classifier) == len(labels)
    assert value(after, "model_prediction_confidence_bucket", model=classifier, le="0.5") == 0
    assert value(after, "model_info", model=classifier, version="tiny-test", task="classify") == 1
    assert value(after, "process_resident_memory_bytes") > 10 * 2**20
    assert types["http_requests"] == "counter" and types["model_input_tokens"] == "histogram"


def stages(header: str) -> dict[str, float]:
    """A Server-Timing header as {name: ms}, in the header's order."""
    return {name: float(ms) for name, ms in re.findall(r"(\w+);dur=([\d.]+)", header)}


def test_server_timing_splits_each_answer_by_stage(server: InProcessServer) -> None:
    """Model work is told apart from the app around it, and is the same time the metrics saw."""
    classifier = "imdb-sentiment@tiny-test"
    _, before = scrape(server)
    response = server.post("/classify", json={"texts": BATCH})
    _, after = scrape(server)
    assert response.status_code == 200
    timing = stages(response.headers["Server-Timing"])
    assert list(timing) == ["tokenize", "model", "app"]
    assert timing["tokenize"] > 0 and timing["model"] > 0
    assert timing["tokenize"] + timing["model"] <= timing["app"]
    onnxruntime_ms = 1e3 * (
        value(after, "model_inference_seconds_sum", model=classifier)
        - value(before, "model_inference_seconds_sum", model=classifier)
    )
    assert 0 < onnxruntime_ms <= timing["model"]
    generated = server.post("/generate", json={"prompt": "The film", "n_words": 5})
    timing = stages(generated.headers["Server-Timing"])
    assert list(timing) == ["model", "app"] and 0 < timing["model"] <= timing["app"]
    # No model work, or refused before any: the app's time alone.
    assert list(stages(server.get("/readyz").headers["Server-Timing"])) == ["app"]
    refused = server.post("/classify", json={"nope": 1})
    assert refused.status_code == 400 and list(stages(refused.headers["Server-Timing"])) == ["app"]


def test_server_timing_can_be_turned_off(tiny_bundles: Path) -> None:
    quiet = InProcessServer(tiny_bundles, server_timing=False)
    response = quiet.post("/classify", json={"text": SINGLES[0]})
    assert response.status_code == 200 and "Server-Timing" not in response.headers


def test_a_request_is_recorded_once_its_answer_is_sent(server: InProcessServer) -> None:
    """A JSON answer is recorded (metrics, log line) when the WSGI server closes its body, after
    the bytes went out, not while the app returns; once, with the body's true length."""
    ok = {"endpoint": "/classify", "method": "POST", "status": "200"}
    _, before = scrape(server)
    environ = falcon.testing.create_environ(
        path="/classify",
        method="POST",
        body=json.dumps({"text": SINGLES[0]}),
        headers={"Content-Type": "application/json"},
    )
    started: list[tuple[str, dict[str, str]]] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: object = None
    ) -> Callable[[bytes], object]:
        started.append((status, dict(headers)))
        return lambda chunk: None

    body = server.app(environ, start_response)
    data = b"".join(body)
    ((status, headers),) = started
    assert status.startswith("200") and int(headers["content-length"]) == len(data)
    assert json.loads(data)["label"] in ("neg", "pos")
    _, sent = scrape(server)
    assert value(sent, "http_requests_total", **ok) == value(before, "http_requests_total", **ok)
    body.close()  # type: ignore[attr-defined]
    _, closed = scrape(server)
    assert (
        value(closed, "http_requests_total", **ok) == value(before, "http_requests_total", **ok) + 1
    )
    assert value(closed, "http_requests_in_flight") == 1  # this scrape


@pytest.fixture(scope="module")
def wire(tiny_bundles: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tiny_bundles, tmp_path_factory.mktemp("metrics-logs"))
    yield running
    assert running.stop() == 0, running.log()


def test_streamed_latency_covers_the_whole_stream(wire: RunningServer) -> None:
    """A stream is timed to its last event, not to its headers: the events are generated lazily,
    after the headers, so the recorded latency must hold all of the stream's model time. Over
    gunicorn: when the WSGI server closes a streamed body is transport."""
    server = wire
    _, before = scrape(server)
    response = server.post(
        "/generate", json={"prompt": "The film", "n_words": 150, "n_samples": 4, "stream": True}
    )
    assert response.status_code == 200 and "event: done" in response.text
    labels = {"endpoint": "/generate", "method": "POST", "status": "200"}
    # gunicorn sends the last chunk, then closes the body iterator (where the stream is timed):
    # the client can see the end a moment before the server has recorded it.
    deadline = time.monotonic() + 10
    while True:
        _, after = scrape(server)
        if value(after, "http_request_duration_seconds_count", **labels) > value(
            before, "http_request_duration_seconds_count", **labels
        ):
            break
        assert time.monotonic() < deadline, "the stream was never recorded"
        time.sleep(0.02)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("http_request_duration_seconds_count", **labels) == 1
    model_seconds = delta("model_inference_seconds_sum", model="imdb-lm@tiny-test")
    assert delta("model_inference_seconds_count", model="imdb-lm@tiny-test") == 150
    assert delta("http_request_duration_seconds_sum", **labels) >= model_seconds > 0
    assert value(after, "http_requests_in_flight") == 1


def test_micro_batched_calls_account_for_every_request(tiny_bundles: Path, tmp_path: Path) -> None:
    """With MICROBATCH on, concurrent requests may share calls: whatever the grouping, the
    calls' rows add up to the texts sent and their request counts to the requests sent. The token
    cap is raised so that no coalesced call is split into several runs (one run per call)."""
    server = start_server(tiny_bundles, tmp_path, MICROBATCH="true", CLASSIFY_MAX_TOKENS="1000000")
    model = "imdb-sentiment@tiny-test"
    texts = [" ".join(BATCH) * 6 for _ in range(3)]
    try:
        _, before = scrape(server)
        results: list[int] = []

        def client() -> None:
            for _ in range(4):
                results.append(server.post("/classify", json={"texts": texts}).status_code)

        threads = [threading.Thread(target=client) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        _, after = scrape(server)
    finally:
        assert server.stop() == 0
    assert results == [200] * 24

    def delta(name: str) -> float:
        return value(after, name, model=model) - value(before, name, model=model)

    calls = delta("model_batch_size_count")
    assert delta("classify_coalesced_requests_count") == calls
    assert delta("classify_coalesced_requests_sum") == 24
    assert delta("model_batch_size_sum") == 24 * len(texts)
    print(f"\n24 concurrent requests ran in {calls:.0f} onnxruntime calls")
