"""export/pipeline.py on this project's own run (`python -m export --run`, the tiny config):
ONNX outputs match torch, padding and state carry are exact, the graphs have real (quantized)
LSTM nodes, manifests carry the figures, a violated bound publishes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from bundle import BundleError, ClassifierModel, LanguageModel, load_bundle, load_manifest
from export.eval_data import EvalData
from export.learner import load_learner_file, text_ids
from export.onnx_graphs import ExportError, assert_lstm_nodes, quantize
from export.pipeline import Bounds, export_learner

TEXTS = [
    "The acting was wonderful and the plot felt brilliant. I watched it twice.",
    "This movie was dreadful!!! The ending isn't what you'd expect. <br /><br />A WASTE of time.",
    "Every scene was superb.",
]


@pytest.fixture(scope="module")
def learners(tiny_run_and_bundles: tuple[Path, Path]) -> dict:
    run, _ = tiny_run_and_bundles
    return {
        "run": run,
        "lm": load_learner_file(run / "lm.pkl"),
        "clf": load_learner_file(run / "classifier.pkl"),
    }


def test_classifier_fp32_and_int8_match_fastai(learners: dict, tiny_bundles: Path) -> None:
    bundle_dir = tiny_bundles / "imdb-sentiment"
    fp32 = load_bundle(bundle_dir, model_path=bundle_dir / "model.fp32.onnx")
    int8 = load_bundle(bundle_dir)
    assert isinstance(fp32, ClassifierModel) and isinstance(int8, ClassifierModel)
    model = learners["clf"].model.eval()
    for text, ids in zip(TEXTS, text_ids(learners["clf"], TEXTS), strict=False):
        assert fp32.tokenizer.encode(text) == ids  # our tokenizer gives fastai's ids
        model.reset()
        with torch.no_grad():
            ref = torch.softmax(model(torch.tensor([ids]))[0], -1).numpy()[0]
        assert np.abs(fp32.predict_texts([text])[0] - ref).max() <= 1e-4
        assert np.abs(int8.predict_texts([text])[0] - ref).max() <= 0.05
    # fastai's own predict agrees on the label
    label, _, _probs = learners["clf"].predict(TEXTS[0])
    assert fp32.labels[int(np.argmax(fp32.predict_texts([TEXTS[0]])[0]))] == str(label)


def test_padded_batch_equals_each_review_alone(tiny_bundles: Path) -> None:
    """Padding is exact (fp32). int8 uses dynamic quantization: activation scales are computed
    per call over the whole batch, so batch-mates move a probability by up to ~1e-2, never the label."""
    bundle_dir = tiny_bundles / "imdb-sentiment"
    # fp32: exact (padding handled by masks). int8: a padding bug moves probabilities by tenths;
    # dynamic activation scales move them by up to ~1e-2 (measured 6.9e-3 on the tiny model)
    for model_path, bound in ((bundle_dir / "model.fp32.onnx", 1e-5), (None, 2e-2)):
        model = load_bundle(bundle_dir, model_path=model_path)
        assert isinstance(model, ClassifierModel)
        batch = model.predict_texts(TEXTS)
        singles = np.concatenate([model.predict_texts([t]) for t in TEXTS])
        assert np.abs(batch - singles).max() <= bound, model_path
        assert (batch.argmax(1) == singles.argmax(1)).all()
        assert np.allclose(batch.sum(axis=1), 1.0, atol=1e-5)


def test_long_review_pools_like_fastai(learners: dict, tiny_bundles: Path) -> None:
    """Past max_len fastai keeps only the last chunks for pooling; the graph must do the same."""
    bundle_dir = tiny_bundles / "imdb-sentiment"
    fp32 = load_bundle(bundle_dir, model_path=bundle_dir / "model.fp32.onnx")
    assert isinstance(fp32, ClassifierModel)
    max_len = fp32.manifest.architecture["max_len"]
    text = " ".join(TEXTS * 40)
    ids = text_ids(learners["clf"], [text])[0]
    assert len(ids) > max_len + 50
    model = learners["clf"].model.eval()
    model.reset()
    with torch.no_grad():
        ref = torch.softmax(model(torch.tensor([ids]))[0], -1).numpy()[0]
    assert np.abs(fp32.predict_ids([ids])[0] - ref).max() <= 1e-4


def test_lm_state_carry_and_torch_parity(learners: dict, tiny_bundles: Path) -> None:
    bundle_dir = tiny_bundles / "imdb-lm"
    fp32 = load_bundle(bundle_dir, model_path=bundle_dir / "model.fp32.onnx")
    assert isinstance(fp32, LanguageModel)
    ids = fp32.tokenizer.encode(TEXTS[1])
    whole, _ = fp32.step(np.array([ids]), fp32.initial_state(1))
    state = fp32.initial_state(1)
    for tok in ids:
        step, state = fp32.step(np.array([[tok]]), state)
    assert np.abs(whole - step).max() <= 1e-4
    model = learners["lm"].model.eval()
    model.reset()
    with torch.no_grad():
        ref = model(torch.tensor([ids]))[0][0, -1].numpy()
    assert np.abs(whole[0] - ref).max() <= 1e-4
    # several samples as one batch: each row equals the same prompt alone
    batch, _ = fp32.step(np.array([ids, ids, ids]), fp32.initial_state(3))
    assert np.abs(batch - whole).max() <= 1e-4


def test_graphs_have_real_and_quantized_lstm_nodes(tiny_bundles: Path, tmp_path: Path) -> None:
    for name in ("imdb-lm", "imdb-sentiment"):
        fp32 = tiny_bundles / name / "model.fp32.onnx"
        n_layers = len(load_manifest(tiny_bundles / name).architecture["layer_sizes"])
        assert assert_lstm_nodes(fp32, "LSTM") == n_layers
        report = quantize(fp32, tmp_path / f"{name}.int8.onnx", n_layers)
        assert report["op_counts"]["DynamicQuantizeLSTM"] == n_layers
        assert "LSTM" not in report["op_counts"]
    # the LM's tied embedding/decoder weight is one initializer, also after quantization
    int8 = onnx.load(str(tmp_path / "imdb-lm.int8.onnx"))
    vocab_size = load_manifest(tiny_bundles / "imdb-lm").architecture["vocab_size"]
    big = [i for i in int8.graph.initializer if len(i.dims) == 2 and vocab_size in i.dims]
    assert len(big) == 1, [(i.name, list(i.dims)) for i in big]


def test_structure_check_fails_on_a_graph_without_lstm(tmp_path: Path) -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "relu.onnx"))
    with pytest.raises(ExportError, match="no LSTM nodes"):
        assert_lstm_nodes(tmp_path / "relu.onnx", "LSTM")


def test_manifests_record_measured_figures(tiny_bundles: Path) -> None:
    lm = load_manifest(tiny_bundles / "imdb-lm").raw
    clf = load_manifest(tiny_bundles / "imdb-sentiment").raw
    assert (
        lm["task"] == "generate" and clf["task"] == "classify" and clf["labels"] == ["neg", "pos"]
    )
    for m in (lm, clf):
        assert m["metrics"]["parity"]["max_abs_diff_vs_torch"] <= 1e-4
        assert m["model"]["quantization"] == "dynamic-int8"
        assert set(m["sources"]) >= {"fastai", "torch", "onnx", "onnxruntime", "spacy"}
        assert m["metrics"]["session_load_ms"][m["model"]["format"]]["same_outputs"]
        assert m["training"]["config"]["name"] == "tiny"
        assert m["source"]["kind"] == "run" and m["direction"] == "forward"
        assert m["metrics"]["evaluation"]["held_out"] is True
        assert m["metrics"]["tokenizer"]["mismatches"] == 0
        assert m["reference_stats"]["documents"] > 0
    assert clf["metrics"]["quantization"]["argmax_agreement_int8_vs_fp32"] >= 0.99
    assert clf["multi_label"] is False and "threshold" not in clf
    assert lm["metrics"]["quantization"]["perplexity_ratio_int8_vs_fp32"] <= 1.02
    held_out = lm["metrics"]["evaluation"]  # the IMDB test reviews: perplexity fp32 and int8
    assert held_out["documents"] == 20 and held_out["int8"]["perplexity"] > 1
    assert held_out["int8"]["perplexity"] / held_out["fp32"]["perplexity"] <= 1.02
    assert lm["metrics"]["parity"]["max_abs_diff_stepwise_vs_whole"] <= 1e-4
    assert clf["metrics"]["sizes"]["int8_bytes"] < clf["metrics"]["sizes"]["fp32_bytes"]


def test_export_refuses_to_publish_when_a_bound_is_violated(
    tiny_run_and_bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    run, _ = tiny_run_and_bundles
    data = EvalData(texts=TEXTS, labels=[["pos"], ["neg"], ["pos"]], description="three texts")
    out = tmp_path / "models"
    with pytest.raises(ExportError, match="max_abs_diff_vs_torch"):
        export_learner(
            load_learner_file(run / "classifier.pkl"),
            out,
            "imdb-sentiment",
            "x",
            source={"kind": "run"},
            eval_data=data,
            bounds=Bounds(max_abs_diff_fp32=0.0),
        )
    assert not out.exists()  # not the bundle, not its staging dir, not the dir made for it


@pytest.mark.parametrize(
    "damage, message",
    [
        ("tamper", "sha256"),
        ("truncate", "bytes"),
        ("remove", "missing file"),
        ("schema", "unknown schema_version"),
        ("vocab", "tokenizer has"),
        ("manifest", "not valid JSON"),
    ],
)
def test_damaged_bundles_are_refused(
    tiny_bundles: Path, tmp_path: Path, damage: str, message: str
) -> None:
    bundle_dir = tmp_path / "b"
    shutil.copytree(tiny_bundles / "imdb-sentiment", bundle_dir)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    model = bundle_dir / manifest["model"]["file"]
    if damage == "tamper":
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
    elif damage == "truncate":
        model.write_bytes(model.read_bytes()[:-100])
    elif damage == "remove":
        (bundle_dir / "tokenizer.json").unlink()
    elif damage == "schema":
        manifest["schema_version"] = 99
        (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "vocab":
        manifest["architecture"]["vocab_size"] += 8
        (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "manifest":
        (bundle_dir / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir)
