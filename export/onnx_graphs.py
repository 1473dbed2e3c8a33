"""torch -> ONNX (TorchScript exporter) -> int8 (dynamic quantization), with structural checks.

The TorchScript exporter (`dynamo=False`) emits real ONNX `LSTM` nodes for nn.LSTM; the quantizer
only rewrites an LSTM into `DynamicQuantizeLSTM` when its weights are graph initializers, and it
does so silently or not at all, so both facts are asserted on the files, not assumed.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from bundle.classifier_rows import CHUNK_INPUTS, POOL_STATES, chunked_classifier_io

from .torch_modules import ChunkedClassifierGraph, ClassifierGraph, LanguageModelGraph

OPSET = 17
QUANTIZED_OPS = ["LSTM", "MatMul", "Gather"]


class ExportError(Exception):
    """The exported or quantized graph is not what the server needs."""


class _PreProcessingHint(logging.Filter):
    """quantize_dynamic logs (root logger) a hint to run onnxruntime's shape-inference
    pre-processing, meant for static quantization of vision models. Our LSTM/MatMul/Gather
    dynamic quantization gains nothing from it and quantize() asserts what it needs on the file,
    so to a user exporting a model the line is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing")


def quiet_quantizer_hints() -> None:
    """Drop only that hint; every other log record passes."""
    root = logging.getLogger()
    if not any(isinstance(f, _PreProcessingHint) for f in root.filters):
        root.addFilter(_PreProcessingHint())


def lm_io_names(n_layers: int) -> tuple[list[str], list[str]]:
    states_in = [n for i in range(n_layers) for n in (f"h{i}", f"c{i}")]
    return ["input_ids", *states_in], ["logits", *[f"{n}_out" for n in states_in]]


def export_lm(graph: LanguageModelGraph, path: Path) -> None:
    inputs, outputs = lm_io_names(len(graph.lstms))
    ids = torch.tensor([[2, 5, 7]], dtype=torch.long)
    sizes = [int(lstm.hidden_size) for lstm in graph.lstms if isinstance(lstm, torch.nn.LSTM)]
    states = [torch.zeros(1, 1, size) for size in sizes for _ in (0, 1)]
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch"}}
    dynamic.update({n: {1: "batch"} for n in inputs[1:] + outputs[1:]})
    _export(graph, (ids, *states), path, inputs, outputs, dynamic)


def export_classifier(graph: ClassifierGraph, path: Path) -> None:
    """The whole-sequence layout that bundles had before chunked graphs; exports now write the
    chunked one. Kept so tests can make such a bundle and check it is still served."""
    ids = torch.tensor([[2, 5, 7, 9], [2, 6, 1, 1]], dtype=torch.long)
    lengths = torch.tensor([4, 2], dtype=torch.long)
    dynamic = {
        "input_ids": {0: "batch", 1: "seq"},
        "lengths": {0: "batch"},
        "probabilities": {0: "batch"},
    }
    _export(graph, (ids, lengths), path, ["input_ids", "lengths"], ["probabilities"], dynamic)


def export_chunked_classifier(graph: ChunkedClassifierGraph, path: Path) -> None:
    inputs, outputs = chunked_classifier_io(len(graph.lstms))
    ids = torch.tensor([[2, 5, 7, 9], [2, 6, 1, 1]], dtype=torch.long)
    lengths = torch.tensor([6, 2], dtype=torch.long)
    offset = torch.tensor([0], dtype=torch.long)
    sizes = [int(lstm.hidden_size) for lstm in graph.lstms if isinstance(lstm, torch.nn.LSTM)]
    states = [torch.zeros(1, 2, size) for size in sizes for _ in (0, 1)]
    width = sizes[-1]
    pool = [
        torch.full((2, width), float("-inf")),
        torch.zeros(2, width),
        torch.zeros(2, 1),
        torch.zeros(2, width),
    ]
    dynamic: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "seq"},
        "lengths": {0: "batch"},
        "probabilities": {0: "batch"},
    }
    carried = inputs[len(CHUNK_INPUTS) :] + outputs[1:]
    for name in carried:  # LSTM states are [1, batch, size], pooling [batch, n]
        dynamic[name] = {0: "batch"} if name.removesuffix("_out") in POOL_STATES else {1: "batch"}
    _export(graph, (ids, lengths, offset, *states, *pool), path, inputs, outputs, dynamic)


def _export(
    model: torch.nn.Module,
    args: tuple,
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic: dict,
) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # the exporter warns about LSTM batch sizes; the checks below decide
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(path))
    assert_lstm_nodes(path, "LSTM")


def op_counts(path: Path) -> Counter[str]:
    return Counter(
        node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node
    )


def assert_lstm_nodes(path: Path, op_type: str) -> int:
    """The graph must run each recurrent layer as one `op_type` node, never an unrolled loop."""
    counts = op_counts(path)
    if counts[op_type] == 0:
        raise ExportError(f"{path.name}: no {op_type} nodes (ops: {dict(counts)})")
    if counts["Loop"] or counts["Scan"]:
        raise ExportError(f"{path.name}: recurrence exported as Loop/Scan, not {op_type}")
    return counts[op_type]


def quantize(fp32_path: Path, int8_path: Path, n_lstm: int) -> dict[str, object]:
    """Dynamic int8 quantization of LSTM, MatMul and Gather weights; verifies that every LSTM
    became DynamicQuantizeLSTM with int8 weight initializers."""
    quantize_dynamic(
        str(fp32_path),
        str(int8_path),
        weight_type=QuantType.QInt8,
        per_channel=False,
        op_types_to_quantize=QUANTIZED_OPS,
    )
    n_quant = assert_lstm_nodes(int8_path, "DynamicQuantizeLSTM")
    counts = op_counts(int8_path)
    if n_quant != n_lstm or counts["LSTM"]:
        raise ExportError(
            f"{int8_path.name}: {n_quant} of {n_lstm} LSTMs quantized, {counts['LSTM']} left in fp32"
        )
    model = onnx.load(str(int8_path))
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DynamicQuantizeLSTM":
            for weight in node.input[1:3]:  # W and R
                if weight not in inits or numpy_helper.to_array(inits[weight]).dtype.name != "int8":
                    raise ExportError(
                        f"{int8_path.name}: DynamicQuantizeLSTM {node.name} weight {weight} is not an int8 initializer"
                    )
    return {
        "op_counts": dict(sorted(counts.items())),
        "quantized_op_types": QUANTIZED_OPS,
        "weight_type": "int8",
    }
