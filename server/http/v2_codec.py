"""The Open Inference Protocol's (KServe v2) tensor codec for text models: reading an
$inference_request (JSON or Triton's binary tensor extension) into texts, and writing output
tensors back. Pure functions of bytes and dicts; the resources in server/resources/v2.py use it.

Tensors: every model takes one input `text` (BYTES, shape [n] or [n, 1]: n texts). Triton's
binary tensor extension (Inference-Header-Content-Length) is understood in both directions,
because tritonclient sends and asks for binary data by default.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import falcon
import numpy as np

from server.http.body import parse_json_object, read_limited
from server.http.errors import InvalidRequest, UnsupportedBody
from server.http.responses import dumps
from server.http.validation import check_text

TEXT = "text"
BINARY_HEADER = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
_REQUEST_KEYS = {"id", "parameters", "inputs", "outputs"}
_INPUT_KEYS = {"name", "shape", "datatype", "parameters", "data"}
_OUTPUT_KEYS = {"name", "parameters"}


# ---------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class InferRequest:
    id: str | None
    parameters: dict[str, Any]
    texts: list[str]
    batch_shape: list[int]
    outputs: list[tuple[str, bool | None]] | None  # (name, binary_data) or None: all outputs


def _int_list(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63 for d in value
    ):
        raise InvalidRequest(f"'{where}' must be an array of non-negative integers.")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{where}' must be an object.")
    return value


def _flatten(data: Any, out: list[Any], depth: int = 0) -> None:
    if depth > 8:
        raise InvalidRequest("'data' is nested too deeply for a text tensor.")
    for item in data:
        if isinstance(item, list):
            _flatten(item, out, depth + 1)
        else:
            out.append(item)


def decode_bytes_tensor(raw: bytes, where: str) -> list[str]:
    """Triton's BYTES serialization: per element a little-endian uint32 length, then the bytes."""
    texts: list[str] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidRequest(f"binary data of '{where}' ends inside an element length.")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidRequest(f"binary data of '{where}' is shorter than its element lengths.")
        try:
            texts.append(raw[offset : offset + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidRequest(f"an element of '{where}' is not valid UTF-8.") from None
        offset += length
    return texts


def encode_bytes_tensor(texts: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in (t.encode("utf-8") for t in texts))


def split_binary(raw: bytes, header_value: str | None) -> tuple[bytes, bytes]:
    """(JSON part, binary part) of a body; without the header it is all JSON."""
    if header_value is None:
        return raw, b""
    try:
        size = int(header_value.strip())
    except ValueError:
        raise InvalidRequest(f"{BINARY_HEADER} must be an integer.") from None
    if not 0 <= size <= len(raw):
        raise InvalidRequest(f"{BINARY_HEADER} is {size} but the body has {len(raw)} bytes.")
    return raw[:size], raw[size:]


def parse_infer_request(
    body: dict[str, Any], binary: bytes, max_texts: int, max_chars: int
) -> InferRequest:
    """Validate an $inference_request holding one BYTES input named `text`."""
    unknown = sorted(set(body) - _REQUEST_KEYS)
    if unknown:
        raise InvalidRequest(
            f"Unknown field(s) {unknown[:5]}; an inference request has {sorted(_REQUEST_KEYS)}."
        )
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest("'id' must be a string.")
    parameters = _object(body.get("parameters", {}), "parameters")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise InvalidRequest(f"'inputs' must be an array with exactly one tensor, '{TEXT}'.")
    tensor = _object(inputs[0], "inputs[0]")
    unknown = sorted(set(tensor) - _INPUT_KEYS)
    if unknown:
        raise InvalidRequest(f"Unknown field(s) {unknown[:5]} in inputs[0].")
    if tensor.get("name") != TEXT:
        raise InvalidRequest(f"The input tensor must be named '{TEXT}'.")
    if tensor.get("datatype") != "BYTES":
        raise InvalidRequest(f"Input '{TEXT}' must have datatype BYTES.")
    shape = _int_list(tensor.get("shape"), "inputs[0].shape")
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise InvalidRequest(f"Input '{TEXT}' must have shape [n] or [n, 1].")
    input_parameters = _object(tensor.get("parameters", {}), "inputs[0].parameters")
    binary_size = input_parameters.get("binary_data_size")
    if binary_size is not None:
        if isinstance(binary_size, bool) or not isinstance(binary_size, int) or binary_size < 0:
            raise InvalidRequest("'binary_data_size' must be a non-negative integer.")
        if "data" in tensor:
            raise InvalidRequest(f"Input '{TEXT}' has both 'data' and binary data.")
        if binary_size != len(binary):
            raise InvalidRequest(
                f"Input '{TEXT}' declares {binary_size} bytes of binary data; "
                f"the body carries {len(binary)}."
            )
        elements: list[Any] = decode_bytes_tensor(binary, TEXT)
    else:
        if binary:
            raise InvalidRequest("The body carries binary data that no input declares.")
        data = tensor.get("data")
        if not isinstance(data, list):
            raise InvalidRequest(f"Input '{TEXT}' needs 'data' (an array of strings).")
        elements = []
        _flatten(data, elements)
    count = math.prod(shape)
    if count != len(elements):
        raise InvalidRequest(
            f"Input '{TEXT}' has shape {shape} ({count} elements) but "
            f"{len(elements)} data elements."
        )
    if not 1 <= count <= max_texts:
        raise InvalidRequest(f"Input '{TEXT}' must hold 1 to {max_texts} texts.")
    texts = [check_text(item, f"{TEXT}[{index}]", max_chars) for index, item in enumerate(elements)]
    return InferRequest(request_id, parameters, texts, [shape[0]], _requested_outputs(body))


def _requested_outputs(body: dict[str, Any]) -> list[tuple[str, bool | None]] | None:
    outputs = body.get("outputs")
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise InvalidRequest("'outputs' must be an array.")
    requested: list[tuple[str, bool | None]] = []
    for index, item in enumerate(outputs):
        item = _object(item, f"outputs[{index}]")
        unknown = sorted(set(item) - _OUTPUT_KEYS)
        if unknown or not isinstance(item.get("name"), str):
            raise InvalidRequest(f"outputs[{index}] must be {{name, parameters?}}.")
        binary = _object(item.get("parameters", {}), f"outputs[{index}].parameters").get(
            "binary_data"
        )
        if binary is not None and not isinstance(binary, bool):
            raise InvalidRequest(f"outputs[{index}].parameters.binary_data must be a boolean.")
        requested.append((item["name"], binary))
    names = [name for name, _ in requested]
    if len(set(names)) != len(names):
        raise InvalidRequest("An output is requested twice.")
    return requested


# ---------------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray | list[str]

    def json(self, binary: bool) -> tuple[dict[str, Any], bytes]:
        entry: dict[str, Any] = {"name": self.name, "datatype": self.datatype, "shape": self.shape}
        if self.datatype == "BYTES":
            texts = list(self.values)
            if binary:
                raw = encode_bytes_tensor(texts)
                entry["parameters"] = {"binary_data_size": len(raw)}
                return entry, raw
            entry["data"] = texts
            return entry, b""
        array = np.ascontiguousarray(self.values, dtype="<f4")
        if binary:
            raw = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            return entry, raw
        entry["data"] = [float(v) for v in array.reshape(-1)]
        return entry, b""


def read_infer_body(req: falcon.Request, limit: int) -> tuple[dict[str, Any], bytes]:
    """(JSON request, binary part) of an infer POST: media type, coding, size and syntax checks."""
    content_type = (req.content_type or "").split(";")[0].strip().lower()
    if content_type not in ("", "application/json", BINARY_CONTENT_TYPE):
        raise UnsupportedBody(
            "Send the inference request as application/json (or "
            "application/octet-stream with the binary extension)."
        )
    encoding = (req.get_header("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedBody(f"Content-Encoding '{encoding[:40]}' is not supported.")
    declared = req.content_length
    stream = req.bounded_stream if declared is not None else req.stream
    raw = read_limited(stream, declared, limit)
    json_part, binary = split_binary(raw, req.get_header(BINARY_HEADER))
    return parse_json_object(json_part), binary


def binary_output_default(request: InferRequest) -> bool:
    value = request.parameters.get("binary_data_output", False)
    if not isinstance(value, bool):
        raise InvalidRequest("'parameters.binary_data_output' must be a boolean.")
    return value


def write_infer_response(
    resp: falcon.Response,
    head: dict[str, Any],
    tensors: list[OutputTensor],
    request: InferRequest,
) -> None:
    """The $inference_response: the requested outputs (all by default), JSON or binary each."""
    binary_default = binary_output_default(request)
    by_name = {tensor.name: tensor for tensor in tensors}
    wanted = request.outputs or [(tensor.name, None) for tensor in tensors]
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for output_name, binary_flag in wanted:
        if output_name not in by_name:
            raise InvalidRequest(
                f"Model '{head['model_name']}' has no output '{output_name}' "
                f"(it has {sorted(by_name)})."
            )
        entry, raw = by_name[output_name].json(
            binary_default if binary_flag is None else binary_flag
        )
        entries.append(entry)
        chunks.append(raw)
    answer = dict(head)
    if request.id is not None:
        answer["id"] = request.id
    answer["outputs"] = entries
    encoded = dumps(answer)
    if any(chunks):
        resp.content_type = BINARY_CONTENT_TYPE
        resp.set_header(BINARY_HEADER, str(len(encoded)))
        resp.data = encoded + b"".join(chunks)
    else:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = encoded
