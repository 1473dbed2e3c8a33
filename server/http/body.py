"""Reading a POST body as one strict JSON object, with the size limit enforced twice.

Why not Falcon's media handler: we need the declared *and* the actually-read size checked before
parsing, UTF-8 only, and JSON without the Python extensions (NaN, Infinity, 1e999 -> inf,
duplicate keys silently overwritten), each mapped to a clear 4xx instead of a 500.
"""

from __future__ import annotations

import json
import math
from typing import Any, Protocol

import falcon

from server.http.errors import BodyTooLarge, MalformedJSON, NotJSON, UnreadableBody

_READ_CHUNK = 64 * 1024


def check_json_content_type(content_type: str | None) -> None:
    """Accept `application/json` with an optional utf-8 charset; anything else is 415."""
    if not content_type:
        raise NotJSON(content_type)
    media_type, *params = (part.strip() for part in content_type.split(";"))
    if media_type.lower() != "application/json":
        raise NotJSON(content_type)
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise NotJSON(content_type)


class Readable(Protocol):
    """A WSGI input stream (Falcon's bounded_stream or the server's own)."""

    def read(self, size: int = -1, /) -> bytes: ...


def read_limited(stream: Readable, declared_length: int | None, limit: int) -> bytes:
    """Read at most `limit` bytes; more than that (declared or sent) is 413, never buffered."""
    if declared_length is not None and declared_length > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    total = 0
    while True:
        try:
            chunk = stream.read(min(_READ_CHUNK, limit + 1 - total))
        except Exception:  # the WSGI server's framing errors (its own classes): the client's fault
            raise UnreadableBody() from None
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge(limit)
    return b"".join(chunks)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:60]!r}")
        result[key] = value
    return result


# Built once: json.loads with hooks would build a decoder on every request.
_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys
)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Strict RFC 8259 parse of a UTF-8 body whose top level must be an object."""
    if not raw.strip():
        raise MalformedJSON("The request body is empty; send a JSON object.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedJSON(f"The request body is not valid UTF-8 (byte {exc.start}).") from None
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise MalformedJSON("The JSON is nested too deeply.") from None
    except ValueError as exc:  # JSONDecodeError, our hooks, int digit limit
        raise MalformedJSON(f"The body is not valid JSON: {exc}.") from None
    if not isinstance(value, dict):
        raise MalformedJSON("The JSON body must be an object.")
    return value


def read_json_object(req: falcon.Request, limit: int) -> dict[str, Any]:
    """Content-Type, size (declared and read) and syntax checks, in that order."""
    check_json_content_type(req.content_type)
    # Falcon's bounded_stream reads nothing without a Content-Length; a chunked body is read from
    # the server's input stream, which ends at the last chunk (the limit still applies).
    declared = req.content_length
    stream = req.bounded_stream if declared is not None else req.stream
    raw = read_limited(stream, declared, limit)
    return parse_json_object(raw)
