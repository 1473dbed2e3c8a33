"""benchmarks/roofline.py: it times the product it claims to, on the layer shapes of the bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks import roofline


def test_the_timed_graph_computes_the_int8_product() -> None:
    m, k, n, nodes = 3, 64, 32, 4
    session = ort.InferenceSession(
        roofline._matmul_graph(m, k, n, nodes), providers=["CPUExecutionProvider"]
    )
    a = np.random.default_rng(5).standard_normal((m, k)).astype(np.float32)
    (y,) = session.run(["y"], {"a": a})
    weight = np.random.default_rng(0).integers(-127, 128, size=(k, n), dtype=np.int8)
    expected = nodes * (a @ (weight.astype(np.float32) * 0.01))
    # dynamic quantization of `a` to uint8 costs at most half a step per element
    bound = nodes * 0.5 * (a.max() - min(a.min(), 0)) / 255 * np.abs(weight * 0.01).sum(0).max()
    assert np.abs(y - expected).max() <= bound
    assert np.abs(y - expected).max() < 0.05 * np.abs(expected).max()


def test_layer_shapes_come_from_the_manifest() -> None:
    manifest = {"architecture": {"emb_size": 256, "layer_sizes": [768, 768, 256]}}
    assert roofline.lstm_layers(manifest) == [(256, 768), (768, 768), (768, 256)]


def test_rates_follow_from_the_time() -> None:
    product = roofline.Product(m=2, k=1000, n=4000, ms=0.5)
    assert product.gops == 2 * 2 * 1000 * 4000 / 0.5e6
    assert product.weight_gbs == 1000 * 4000 / 0.5e6
    timed = roofline.int8_product(1, 64, 256, repeats=2, nodes=2)
    assert timed.ms > 0 and (timed.m, timed.k, timed.n) == (1, 64, 256)


def test_floor_and_session_on_the_tiny_classifier(tiny_bundles: Path) -> None:
    out = roofline.measure(tiny_bundles / "imdb-sentiment", repeats=1)
    assert out["bundle"] == "imdb-sentiment"
    assert out["floor"]["per_token_ms"] > 0 and out["session_per_token_ms"] > 0
    curve = {(r["length"], r["batch"]): r for r in out["batch_curve"]}
    assert set(curve) == {(n, b) for n in roofline.LENGTHS for b in roofline.BATCH_SIZES}
    assert all(r["ms_per_review"] == round(r["ms"] / r["batch"], 3) for r in curve.values())
    assert out["session_over_floor"] == round(
        out["session_per_token_ms"] / out["floor"]["per_token_ms"], 2
    )
