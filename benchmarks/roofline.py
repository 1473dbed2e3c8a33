"""This core's int8 limits, and the classifier session's distance to them.

An AWD-LSTM at batch 1 is matrix-vector work. Per token, each layer multiplies its recurrent
weights R [h, 4h] by the previous hidden state (a GEMV that must wait for the step before);
the input projection W [in, 4h] needs no state, so it runs for all tokens of a call as one GEMM.
The floor per token is therefore: the recurrent GEMVs, plus the input GEMM divided by the
tokens, each measured here with onnxruntime's own int8 kernel (`DynamicQuantizeMatMul`, what
`quantize_dynamic` emits for a MatMul), one thread, on whatever core this process is pinned to.
Memory bandwidth (numpy copies at cache and DRAM sizes) says what bounds those products.

Repeated work is put inside one graph (many nodes sharing one weight, summed), so the
per-`run()` cost of onnxruntime does not pose as the GEMV's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

NODES_PER_GRAPH = 32
TOKENS_PER_CALL = 256  # a median IMDB review is about 230 tokens


@dataclass(frozen=True)
class Product:
    """One int8 product [m, k] x [k, n] and what it cost."""

    m: int
    k: int
    n: int
    ms: float

    @property
    def gops(self) -> float:
        return 2 * self.m * self.k * self.n / (self.ms * 1e6)

    @property
    def weight_gbs(self) -> float:
        """int8 weight bytes streamed per second (the bound of a GEMV)."""
        return self.k * self.n / (self.ms * 1e6)

    def row(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "gops": round(self.gops, 2),
            "weight_gb_per_s": round(self.weight_gbs, 2),
        }


def _best_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # first-run allocations
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best * 1e3


def copy_bandwidth_gbs(n_bytes: int, repeats: int = 5) -> float:
    """Bytes read + written per second by a numpy copy of `n_bytes` (best of `repeats`)."""
    src = np.ones(n_bytes, dtype=np.uint8)
    dst = np.empty_like(src)
    ms = _best_ms(lambda: np.copyto(dst, src), repeats)
    return 2 * n_bytes / (ms * 1e6)


def _matmul_graph(m: int, k: int, n: int, nodes: int) -> bytes:
    """`nodes` DynamicQuantizeMatMul nodes on one input and one int8 weight, summed."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.integers(-127, 128, size=(k, n), dtype=np.int8)
    inits = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.asarray([0.01], dtype=np.float32), "w_scale"),
        numpy_helper.from_array(np.asarray([0], dtype=np.int8), "w_zero"),
    ]
    products = [f"y{i}" for i in range(nodes)]
    graph_nodes = [
        helper.make_node(
            "DynamicQuantizeMatMul",
            ["a", "w", "w_scale", "w_zero"],
            [name],
            domain="com.microsoft",
        )
        for name in products
    ]
    graph_nodes.append(helper.make_node("Sum", products, ["y"]))
    graph = helper.make_graph(
        graph_nodes,
        "roofline",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    return bytes(model.SerializeToString())


def int8_product(m: int, k: int, n: int, repeats: int = 7, nodes: int = NODES_PER_GRAPH) -> Product:
    """The time of one int8 [m, k] x [k, n] through onnxruntime on one thread."""
    import onnxruntime as ort

    from bundle import session_options

    session = ort.InferenceSession(
        _matmul_graph(m, k, n, nodes),
        sess_options=session_options(1, 1),
        providers=["CPUExecutionProvider"],
    )
    feed = {"a": np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)}
    whole = _best_ms(lambda: session.run(["y"], feed), repeats)
    return Product(m, k, n, whole / nodes)


def lstm_layers(manifest: dict[str, Any]) -> list[tuple[int, int]]:
    """(input size, hidden size) of each LSTM layer of a bundle's AWD-LSTM."""
    arch = manifest["architecture"]
    sizes = [int(s) for s in arch["layer_sizes"]]
    inputs = [int(arch["emb_size"]), *sizes[:-1]]
    return list(zip(inputs, sizes, strict=True))


def floor_per_token_ms(
    layers: Sequence[tuple[int, int]], tokens: int = TOKENS_PER_CALL, repeats: int = 7
) -> dict[str, Any]:
    """The int8 floor of one token at batch 1: recurrent GEMVs + the input GEMM per token."""
    rows, total = [], 0.0
    for n_in, hidden in layers:
        recurrent = int8_product(1, hidden, 4 * hidden, repeats)
        projection = int8_product(tokens, n_in, 4 * hidden, repeats, nodes=4)
        per_token = recurrent.ms + projection.ms / tokens
        total += per_token
        rows.append(
            {
                "input": n_in,
                "hidden": hidden,
                "recurrent_gemv": recurrent.row(),
                "input_gemm": projection.row(),
                "per_token_ms": round(per_token, 5),
            }
        )
    return {"layers": rows, "per_token_ms": round(total, 5), "tokens_per_call": tokens}


def session_per_token_ms(
    bundle_dir: Path, tokens: int = TOKENS_PER_CALL, repeats: int = 7
) -> float:
    """The shipped classifier session on one `tokens`-long review at batch 1, per token."""
    from bundle import ClassifierModel, load_bundle

    model = load_bundle(bundle_dir, threads=1, inter_threads=1)
    assert isinstance(model, ClassifierModel), f"{bundle_dir} is not a classifier bundle"
    rng = np.random.default_rng(2)
    ids = [model.bos_id, *rng.integers(8, model.vocab_size, size=tokens - 1).tolist()]
    return _best_ms(lambda: model.predict_ids([ids]), repeats) / tokens


BATCH_SIZES = (1, 2, 4, 8, 16)
LENGTHS = (32, 64, 128, 256, 512, 1024)


def batch_curve(
    bundle_dir: Path,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    lengths: Sequence[int] = LENGTHS,
    repeats: int = 5,
) -> list[dict[str, Any]]:
    """Session ms per review against batch size and length (equal lengths: no padding), the
    curve the micro-batching default should be read from."""
    from bundle import ClassifierModel, load_bundle

    model = load_bundle(bundle_dir, threads=1, inter_threads=1)
    assert isinstance(model, ClassifierModel), f"{bundle_dir} is not a classifier bundle"
    rng = np.random.default_rng(3)
    rows = []
    for length in lengths:
        reviews = [
            [model.bos_id, *rng.integers(8, model.vocab_size, size=length - 1).tolist()]
            for _ in range(max(batch_sizes))
        ]
        for batch in batch_sizes:
            ms = round(_best_ms(lambda: model.predict_ids(reviews[:batch]), repeats), 3)  # noqa: B023
            rows.append(
                {
                    "length": length,
                    "batch": batch,
                    "ms": ms,
                    "ms_per_review": round(ms / batch, 3),
                }
            )
    return rows


def measure(bundle_dir: Path, repeats: int = 7) -> dict[str, Any]:
    """Everything the report's roofline section shows, for one classifier bundle."""
    import json

    manifest = json.loads((bundle_dir / "manifest.json").read_text(encoding="utf-8"))
    floor = floor_per_token_ms(lstm_layers(manifest), repeats=repeats)
    # Rounded once, so the ratio the report prints follows from the two figures it prints.
    session = round(session_per_token_ms(bundle_dir, repeats=repeats), 5)
    return {
        "bundle": manifest["name"],
        "bandwidth_gb_per_s": {
            "l2 (256 KiB)": round(copy_bandwidth_gbs(256 * 2**10), 1),
            "l3 (8 MiB)": round(copy_bandwidth_gbs(8 * 2**20), 1),
            "dram (256 MiB)": round(copy_bandwidth_gbs(256 * 2**20, repeats=3), 1),
        },
        "gemm_batch_curve": [
            int8_product(m, 768, 3072, repeats, nodes=8).row() for m in (1, 2, 4, 8, 16, 32)
        ],
        "floor": floor,
        "batch_curve": batch_curve(bundle_dir, repeats=max(2, repeats // 2)),
        "session_per_token_ms": session,
        "session_over_floor": round(session / floor["per_token_ms"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.roofline --bundle DIR`: the JSON of `measure` on stdout."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m benchmarks.roofline", description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True, help="a classifier bundle dir")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.bundle, args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
