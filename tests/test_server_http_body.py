"""server/body.py and server/validation.py: strict JSON and field checks, as pure functions.

The same cases also run over real HTTP in test_server_http.py; here each rule is pinned to the
exact exception class the error mapping turns into a status.
"""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.http.body import check_json_content_type, parse_json_object, read_limited
from server.http.errors import BodyTooLarge, InvalidRequest, MalformedJSON, NotJSON
from server.http.validation import (
    check_text,
    optional_bool,
    optional_int,
    optional_number,
    reject_unknown_fields,
    text_list,
)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        'application/json; charset="utf-8"',
    ],
)
def test_json_content_types_accepted(content_type: str) -> None:
    check_json_content_type(content_type)


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonp",
        "application/json; charset=latin-1",
        "multipart/form-data; boundary=x",
    ],
)
def test_other_content_types_refused(content_type: str | None) -> None:
    with pytest.raises(NotJSON):
        check_json_content_type(content_type)


def test_declared_length_over_limit_refused_before_reading() -> None:
    stream = io.BytesIO(b"x" * 10)
    with pytest.raises(BodyTooLarge):
        read_limited(stream, declared_length=101, limit=100)
    assert stream.tell() == 0


def test_bytes_actually_sent_are_counted_too() -> None:
    with pytest.raises(BodyTooLarge):
        read_limited(io.BytesIO(b"x" * 101), declared_length=None, limit=100)
    assert read_limited(io.BytesIO(b"x" * 100), declared_length=None, limit=100) == b"x" * 100


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"{",
        b"[1, 2]",
        b'"text"',
        b"null",
        b"{'a': 1}",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"a": 1e999}',
        b'{"a": -1e400}',
        b'{"a": 1, "a": 2}',
        b"\xff\xfe{}",
        b'{"a": "\xc3"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a": ' + b"9" * 5000 + b"}",
        b'{"a": 1} {"b": 2}',
    ],
)
def test_malformed_json_refused(raw: bytes) -> None:
    with pytest.raises(MalformedJSON):
        parse_json_object(raw)


def test_valid_json_object_parsed() -> None:
    assert parse_json_object(b'{"text": "caf\xc3\xa9 \\u00e9", "n": 2.5e3}') == {
        "text": "café é",
        "n": 2500.0,
    }


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_malformed(raw: bytes) -> None:
    with contextlib.suppress(MalformedJSON):
        assert isinstance(parse_json_object(raw), dict)


@pytest.mark.parametrize("value", [None, 1, ["a"], "", "   \n\t", "x" * 11, "a\ud800b"])
def test_bad_texts_refused(value: object) -> None:
    with pytest.raises(InvalidRequest):
        check_text(value, "text", max_chars=10)


def test_text_list_limits() -> None:
    assert text_list({"texts": ["a", "b"]}, "texts", 2, 5) == ["a", "b"]
    for bad in ([], ["a", "b", "c"], "ab", ["a", 3], ["a", " "]):
        with pytest.raises(InvalidRequest):
            text_list({"texts": bad}, "texts", 2, 5)


def test_unknown_fields_refused() -> None:
    reject_unknown_fields({"text": 1}, ("text",))
    with pytest.raises(InvalidRequest) as caught:
        reject_unknown_fields({"texxt": "a"}, ("text",))
    assert "texxt" in (caught.value.description or "")


def test_integers_are_integers_in_range() -> None:
    assert optional_int({}, "n", 4, 1, 9) == 4
    assert optional_int({"n": 9}, "n", 4, 1, 9) == 9
    assert optional_int({"n": None}, "n", 4, 1, 9, nullable=True) is None
    for bad in (0, 10, True, 2.0, "3", None, 10**400):
        with pytest.raises(InvalidRequest):
            optional_int({"n": bad}, "n", 4, 1, 9)


def test_numbers_in_range() -> None:
    assert optional_number({"t": 0}, "t", 1.0, 0.0, 10.0) == 0.0
    assert optional_number({"p": 1}, "p", None, 0.0, 1.0, low_exclusive=True) == 1.0
    for bad in (-0.1, 10.5, "1", False, None, 10**400):
        with pytest.raises(InvalidRequest):
            optional_number({"t": bad}, "t", 1.0, 0.0, 10.0)
    with pytest.raises(InvalidRequest):
        optional_number({"p": 0}, "p", None, 0.0, 1.0, low_exclusive=True)


def test_booleans_are_booleans() -> None:
    assert optional_bool({}, "b", True) is True
    for bad in (0, 1, "true", None):
        with pytest.raises(InvalidRequest):
            optional_bool({"b": bad}, "b", True)
