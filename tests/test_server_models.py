"""Many bundles in one server (server/inference/loading.py, the `model` field of the resources):
which bundle answers, by name or by default; refusals at start-up; multi-label answers; and every
bundle in /models, /metrics, drift, the spec and the v2 routes.

The bundles are copies of the real tiny bundles under other names (server_harness.bundle_copy):
the same verified weights, so two classifiers must give the same probabilities. The multi-label
copy is the tiny classifier's graph flagged multi-label: it checks the server's side (which labels
pass the threshold, the answer's shape); export's tests check real multi-label learners.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from server_harness import (
    REPO_ROOT,
    InProcessServer,
    SchemaChecker,
    assert_json_error,
    bundle_copy,
    free_port,
    parse,
    server_env,
    start_server,
    value,
)

from server.config import Settings
from server.inference.loading import ModelDirError, load_models
from server.runtime import ServerRuntime

REVIEW = "I loved this movie, the acting was wonderful and the story moving"
THRESHOLD = 0.3


@pytest.fixture(scope="module")
def many(tiny_bundles: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two single-label classifiers, a multi-label one and two language models."""
    root = tmp_path_factory.mktemp("many")
    bundle_copy(tiny_bundles / "imdb-sentiment", root)
    bundle_copy(tiny_bundles / "imdb-sentiment", root, name="sentiment-b", version="b")
    bundle_copy(
        tiny_bundles / "imdb-sentiment", root, name="tags", multi_label=True, threshold=THRESHOLD
    )
    bundle_copy(tiny_bundles / "imdb-lm", root)
    bundle_copy(tiny_bundles / "imdb-lm", root, name="lm-b", version="b")
    return root


@pytest.fixture(scope="module")
def server(many: Path) -> InProcessServer:
    return InProcessServer(many, default_classifier="imdb-sentiment", default_lm="imdb-lm")


# ------------------------------------------------------------------ which bundle answers
def test_without_a_model_the_default_answers_and_with_one_that_one(
    server: InProcessServer,
) -> None:
    default = server.post("/classify", json={"text": REVIEW}).json()
    named = server.post("/classify", json={"text": REVIEW, "model": "sentiment-b"}).json()
    explicit_null = server.post("/classify", json={"text": REVIEW, "model": None}).json()
    assert default["model"] == explicit_null["model"] == "imdb-sentiment@tiny-test"
    assert named["model"] == "sentiment-b@b"
    assert named["probabilities"] == default["probabilities"]  # the same weights
    batch = server.post("/classify", json={"texts": [REVIEW, "dull"], "model": "sentiment-b"})
    assert batch.json()["model"] == "sentiment-b@b" and len(batch.json()["results"]) == 2


def test_generate_and_tokenize_pick_by_name(server: InProcessServer) -> None:
    body = {"prompt": "The film", "n_words": 5, "seed": 3}
    default = server.post("/generate", json=body).json()
    other = server.post("/generate", json={**body, "model": "lm-b"}).json()
    assert default["model"] == "imdb-lm@tiny-test" and other["model"] == "lm-b@b"
    assert other["samples"] == default["samples"]  # same weights, same seed
    stream = server.post("/generate", json={**body, "model": "lm-b", "stream": True})
    assert stream.status_code == 200 and '"model": "lm-b@b"' in stream.text
    tokens = server.post("/tokenize", json={"text": "The film", "model": "lm-b"}).json()
    assert tokens["model"] == "lm-b@b"
    assert server.post("/tokenize", json={"text": "x"}).json()["model"].startswith("imdb-sentim")


@pytest.mark.parametrize(
    "path,body",
    [
        ("/classify", {"text": "a", "model": "nope"}),
        ("/classify", {"text": "a", "model": "imdb-lm"}),  # a bundle, but not a classifier
        ("/generate", {"prompt": "a", "model": "nope"}),
        ("/generate", {"prompt": "a", "model": "imdb-sentiment"}),
        ("/generate", {"prompt": "a", "model": "nope", "stream": True}),  # before any event
        ("/tokenize", {"text": "a", "model": "nope"}),
    ],
)
def test_an_unknown_model_is_a_json_404(server: InProcessServer, path: str, body: dict) -> None:
    error = assert_json_error(server.post(path, json=body), 404)
    assert error["title"] == "Unknown model" and repr(body["model"]) in error["description"]


def test_a_model_that_is_not_a_string_is_400(server: InProcessServer) -> None:
    for path, body in (("/classify", {"text": "a"}), ("/generate", {"prompt": "a"})):
        assert_json_error(server.post(path, json={**body, "model": 3}), 400)


# ------------------------------------------------------------------ multi-label answers
def test_multi_label_answer_lists_every_label_above_the_threshold(
    server: InProcessServer, many: Path
) -> None:
    texts = [REVIEW, "dull and boring, the worst film", "a film"]
    answer = server.post("/classify", json={"texts": texts, "model": "tags"}).json()
    single = server.post("/classify", json={"text": texts[0], "model": "tags"}).json()
    labels = json.loads((many / "tags" / "manifest.json").read_text())["labels"]
    assert answer["model"] == single["model"] == "tags@tiny-test"
    first = answer["results"][0]
    assert (single["labels"], single["threshold"]) == (first["labels"], first["threshold"])
    for result in answer["results"]:
        assert set(result) == {"labels", "probabilities", "threshold"}
        assert result["threshold"] == THRESHOLD
        assert list(result["probabilities"]) == labels
        above = [name for name in labels if result["probabilities"][name] > THRESHOLD]
        assert result["labels"] == above
    plain = server.post("/classify", json={"text": REVIEW}).json()
    assert set(plain) == {"label", "probabilities", "model"}  # single-label unchanged


def test_v2_answers_multi_label_with_a_labels_tensor(server: InProcessServer) -> None:
    meta = server.get("/v2/models/tags").json()
    assert [o["name"] for o in meta["outputs"]] == ["labels", "probabilities"]
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": [REVIEW, "x"]}]}
    answer = server.post("/v2/models/tags/infer", json=body).json()
    outputs = {o["name"]: o for o in answer["outputs"]}
    probabilities = np.asarray(outputs["probabilities"]["data"]).reshape(2, -1)
    for chosen, row in zip(outputs["labels"]["data"], probabilities, strict=True):
        assert json.loads(chosen) == [
            name for name, p in zip(("neg", "pos"), row, strict=True) if p > THRESHOLD
        ]


# ------------------------------------------------------------------ every bundle is visible
def test_models_lists_every_bundle_and_marks_the_defaults(server: InProcessServer) -> None:
    listed = {entry["name"]: entry for entry in server.get("/models").json()["models"]}
    assert set(listed) == {"imdb-sentiment", "sentiment-b", "tags", "imdb-lm", "lm-b"}
    assert {name for name, e in listed.items() if e["default"]} == {"imdb-sentiment", "imdb-lm"}
    assert listed["tags"]["multi_label"] is True and listed["tags"]["threshold"] == THRESHOLD
    assert (
        listed["sentiment-b"]["multi_label"] is False and listed["sentiment-b"]["threshold"] is None
    )
    assert all(e["direction"] == "forward" for e in listed.values())
    spec = SchemaChecker(server.get("/openapi.json").json())
    schema = spec.response_schema("/models", "get", 200)
    assert schema is not None and not spec.errors(server.get("/models").json(), schema)


def test_metrics_and_drift_cover_every_bundle(server: InProcessServer) -> None:
    before = parse(server.get("/metrics").text)[1]
    for name in ("imdb-sentiment", "sentiment-b", "tags"):
        assert server.post("/classify", json={"text": REVIEW, "model": name}).status_code == 200
    _, samples = parse(server.get("/metrics").text)
    for model_id, task in (
        ("imdb-sentiment@tiny-test", "classify"),
        ("sentiment-b@b", "classify"),
        ("tags@tiny-test", "classify"),
        ("imdb-lm@tiny-test", "generate"),
        ("lm-b@b", "generate"),
    ):
        version = model_id.split("@")[1]
        assert value(samples, "model_info", model=model_id, version=version, task=task) == 1
    for model_id in ("imdb-sentiment@tiny-test", "sentiment-b@b", "tags@tiny-test"):
        count = "model_inference_seconds_count"
        assert value(samples, count, model=model_id) > value(before, count, model=model_id)
    drift = {e["name"]: e.get("drift") for e in server.get("/models").json()["models"]}
    assert drift["imdb-sentiment"] is not None and drift["sentiment-b"] is not None
    assert drift["imdb-lm"] is None


def test_the_spec_lists_the_names_each_model_field_accepts(server: InProcessServer) -> None:
    schemas = server.get("/openapi.json").json()["components"]["schemas"]
    enum = {
        k: schemas[k]["properties"]["model"]["enum"] for k in ("ClassifyRequest", "GenerateRequest")
    }
    assert enum["ClassifyRequest"] == ["imdb-sentiment", "sentiment-b", "tags", None]
    assert enum["GenerateRequest"] == ["imdb-lm", "lm-b", None]
    v2_names = server.get("/openapi.json").json()["components"]["parameters"]["ModelName"]
    assert len(v2_names["schema"]["enum"]) == 5


def test_v2_serves_every_bundle(server: InProcessServer) -> None:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [REVIEW]}]}
    for name in ("imdb-sentiment", "sentiment-b"):
        answer = server.post(f"/v2/models/{name}/infer", json=body).json()
        assert answer["model_name"] == name and answer["outputs"][0]["name"] == "label"
    lm = server.post("/v2/models/lm-b/infer", json={**body, "parameters": {"n_words": 2}})
    assert lm.json()["model_name"] == "lm-b"


# ------------------------------------------------------------------ refusals at start-up
def test_several_per_task_without_a_default_refuse_to_start(many: Path) -> None:
    with pytest.raises(ModelDirError) as refused:
        load_models(many, default_lm="imdb-lm")
    message = str(refused.value)
    assert "DEFAULT_CLASSIFIER" in message
    assert all(name in message for name in ("imdb-sentiment", "sentiment-b", "tags"))
    with pytest.raises(
        ModelDirError, match=r"2 'generate' bundles \(imdb-lm, lm-b\); set DEFAULT_LM"
    ):
        load_models(many, default_classifier="tags")


@pytest.mark.parametrize(
    "classifier,lm,problem",
    [
        ("nope", "imdb-lm", "DEFAULT_CLASSIFIER='nope' names no 'classify' bundle"),
        ("imdb-lm", "imdb-lm", "DEFAULT_CLASSIFIER='imdb-lm' names no 'classify' bundle"),
        ("tags", "imdb-sentiment", "DEFAULT_LM='imdb-sentiment' names no 'generate' bundle"),
    ],
)
def test_a_default_must_name_a_bundle_of_its_task(
    many: Path, classifier: str, lm: str, problem: str
) -> None:
    with pytest.raises(ModelDirError, match=problem):
        load_models(many, default_classifier=classifier, default_lm=lm)


def test_one_bundle_per_task_needs_no_default(tiny_bundles: Path) -> None:
    models = load_models(tiny_bundles)
    assert (models.default_classifier, models.default_language_model) == (
        "imdb-sentiment",
        "imdb-lm",
    )


def test_a_backward_language_model_is_refused_and_a_backward_classifier_served(
    tiny_bundles: Path, tmp_path: Path
) -> None:
    backward_lm = tmp_path / "lm"
    bundle_copy(tiny_bundles / "imdb-lm", backward_lm, direction="backward")
    with pytest.raises(ModelDirError, match=r"backward language model.*cannot continue a prompt"):
        load_models(backward_lm)
    backward_clf = tmp_path / "clf"
    bundle_copy(tiny_bundles / "imdb-sentiment", backward_clf, name="bwd", direction="backward")
    runtime = ServerRuntime.load(Settings(model_dir=backward_clf))
    assert runtime.models.classifier().backwards
    listed = InProcessServer(backward_clf).get("/models").json()["models"]
    assert listed[0]["direction"] == "backward"


def test_two_bundles_with_one_name_are_refused(tiny_bundles: Path, tmp_path: Path) -> None:
    bundle_copy(tiny_bundles / "imdb-sentiment", tmp_path)
    (tmp_path / "imdb-sentiment").rename(tmp_path / "first")
    bundle_copy(tiny_bundles / "imdb-sentiment", tmp_path)
    with pytest.raises(ModelDirError, match="two bundles named 'imdb-sentiment'"):
        load_models(tmp_path)


# ------------------------------------------------------------------ over gunicorn
def test_gunicorn_serves_two_classifiers_by_name(many: Path, tmp_path: Path) -> None:
    two = tmp_path / "two"
    for name in ("imdb-sentiment", "sentiment-b", "imdb-lm"):
        bundle_copy(many / name, two)
    server = start_server(two, tmp_path / "logs", DEFAULT_CLASSIFIER="sentiment-b")
    try:
        default = server.post("/classify", json={"text": REVIEW}).json()
        named = server.post("/classify", json={"text": REVIEW, "model": "imdb-sentiment"}).json()
        assert default["model"] == "sentiment-b@b" and named["model"] == "imdb-sentiment@tiny-test"
        assert named["probabilities"] == default["probabilities"]
        assert_json_error(server.post("/classify", json={"text": "a", "model": "nope"}), 404)
        listed = {e["name"]: e["default"] for e in server.get("/models").json()["models"]}
        assert listed == {"imdb-sentiment": False, "sentiment-b": True, "imdb-lm": True}
    finally:
        assert server.stop() == 0, server.log()[-2000:]


def test_python_m_server_refuses_several_classifiers_without_a_default(
    many: Path, tmp_path: Path
) -> None:
    """The refusal as an operator meets it: exit 3 and one line naming bundles and variable."""
    result = subprocess.run(
        [sys.executable, "-m", "server"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        env=server_env(many, free_port(), DEFAULT_LM="imdb-lm"),
    )
    log = result.stdout + result.stderr
    assert result.returncode == 3, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    refusal = [json.loads(line) for line in log.splitlines() if '"CRITICAL"' in line]
    assert len(refusal) == 1, log[-3000:]
    assert "DEFAULT_CLASSIFIER" in refusal[0]["error"]
    assert "imdb-sentiment, sentiment-b, tags" in refusal[0]["error"]
