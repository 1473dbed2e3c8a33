"""Writing JSON bodies strictly: never NaN/Infinity on the wire, whatever a manifest holds."""

from __future__ import annotations

import json
import math
from typing import Any

import falcon


def finite(value: Any) -> Any:
    """Copy of a JSON-like value with non-finite floats replaced by null (valid JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


# Built once: json.dumps with options would build an encoder on every response.
_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False)


def dumps(value: Any) -> bytes:
    return _ENCODER.encode(value).encode("utf-8")


def send_json(resp: falcon.Response, value: Any, status: str = falcon.HTTP_200) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = dumps(value)
