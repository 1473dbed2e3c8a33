"""Field checks for the JSON bodies: one small function per kind of value.

Why hand-written instead of a schema library: the serve image stays at four dependencies, and
each check words its own 400 message. The OpenAPI spec states the same rules; a test compares
the server's behaviour against it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from server.http.errors import InvalidRequest

_MISSING = object()


def reject_unknown_fields(body: dict[str, Any], allowed: Iterable[str]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        shown = ", ".join(repr(name[:60]) for name in unknown[:5])
        raise InvalidRequest(f"Unknown field(s): {shown}. Allowed: {', '.join(sorted(allowed))}.")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


def check_text(value: Any, where: str, max_chars: int) -> str:
    """A non-blank string of valid Unicode no longer than MAX_TEXT_CHARS."""
    if not isinstance(value, str):
        raise InvalidRequest(f"'{where}' must be a string, not {_type_name(value)}.")
    if not value.strip():
        raise InvalidRequest(f"'{where}' must not be empty or only whitespace.")
    if len(value) > max_chars:
        raise InvalidRequest(
            f"'{where}' has {len(value)} characters; the limit is {max_chars} (MAX_TEXT_CHARS)."
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"'{where}' contains an unpaired surrogate escape.") from None
    return value


def required_text(body: dict[str, Any], key: str, max_chars: int) -> str:
    if key not in body:
        raise InvalidRequest(f"Missing required field '{key}'.")
    return check_text(body[key], key, max_chars)


def text_list(body: dict[str, Any], key: str, max_items: int, max_chars: int) -> list[str]:
    value = body[key]
    if not isinstance(value, list):
        raise InvalidRequest(f"'{key}' must be an array of strings, not {_type_name(value)}.")
    if not value:
        raise InvalidRequest(f"'{key}' must contain at least one text.")
    if len(value) > max_items:
        raise InvalidRequest(
            f"'{key}' has {len(value)} items; the limit is {max_items} (MAX_BATCH_TEXTS)."
        )
    return [check_text(item, f"{key}[{index}]", max_chars) for index, item in enumerate(value)]


def optional_int(
    body: dict[str, Any],
    key: str,
    default: int | None,
    low: int,
    high: int,
    *,
    nullable: bool = False,
) -> int | None:
    """An integer (booleans and 2.0 are not) within [low, high]; null only if nullable."""
    value = body.get(key, _MISSING)
    if value is _MISSING:
        return default
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "an integer or null" if nullable else "an integer"
        raise InvalidRequest(f"'{key}' must be {kind}, not {_type_name(value)}.")
    if not low <= value <= high:
        raise InvalidRequest(f"'{key}' must be between {low} and {high}.")
    return value


def optional_number(
    body: dict[str, Any],
    key: str,
    default: float | None,
    low: float,
    high: float,
    *,
    low_exclusive: bool = False,
    nullable: bool = False,
) -> float | None:
    """A finite JSON number within the range (the JSON parser already refused NaN/Infinity)."""
    value = body.get(key, _MISSING)
    if value is _MISSING:
        return default
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a number or null" if nullable else "a number"
        raise InvalidRequest(f"'{key}' must be {kind}, not {_type_name(value)}.")
    number = float(value) if abs(value) < 1e300 else float("inf")
    too_low = number <= low if low_exclusive else number < low
    if too_low or number > high:
        bracket = "(" if low_exclusive else "["
        raise InvalidRequest(f"'{key}' must be in {bracket}{low}, {high}].")
    return number


def optional_bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, _MISSING)
    if value is _MISSING:
        return default
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{key}' must be true or false, not {_type_name(value)}.")
    return value


def optional_model(body: dict[str, Any]) -> str | None:
    """The `model` field: a loaded bundle's name, or absent/null for the task's default (an
    unknown name is the inference wing's 404, not a 400: the request itself is well formed)."""
    value = body.get("model")
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"'model' must be a string (a bundle name), not {_type_name(value)}.")
    return value
