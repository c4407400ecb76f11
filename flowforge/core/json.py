"""JSON in and out of FlowForge: one decoder, one encoder, exact for every JSON number.

JSON numbers have arbitrary precision and JSONB keeps them (as ``numeric``);
a Python float does not (``12345678901234567890.5`` would come back as
``12345678901234567000``). So the decoder keeps a number as a float only when
the float writes back as the very text it was read from, and as a
:class:`~decimal.Decimal` otherwise; the encoder writes a Decimal out in full,
as PostgreSQL stores and returns it. No digit is lost between a request, JSONB
and a response, and the common case (no Decimal) stays on :mod:`json`'s C path.
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from decimal import Decimal
from typing import Any
from uuid import UUID

from pydantic_core import SchemaSerializer, core_schema


class ExactNumber(Decimal):
    """A JSON number a float cannot hold exactly, as the decoder reads it.

    A Decimal in every respect, except in a response: Pydantic would write a
    Decimal as a JSON string, so this one is written as a marked string (see
    :func:`unmark_numbers`) that the API's route class turns back into the number.
    """

    __slots__ = ()


def _serialize_number(value: ExactNumber, info: core_schema.SerializationInfo) -> Any:
    return NUMBER_MARK + decimal_text(value) if info.mode_is_json() else value


# Pydantic serializes a value of a field typed Any by its class's
# __pydantic_serializer__ (as it does models held in such fields).
ExactNumber.__pydantic_serializer__ = SchemaSerializer(  # type: ignore[attr-defined]
    core_schema.any_schema(
        serialization=core_schema.plain_serializer_function_ser_schema(
            _serialize_number, info_arg=True
        )
    )
)


def _number(text: str) -> float | Decimal:
    """A JSON number with a fraction or an exponent (``parse_float``)."""
    value = float(text)
    # A float when it writes back as the same text (0.5, 2.75, -0.0): the C
    # encoder's fast path. Exponent forms become Decimals, so every number the
    # encoder writes is written out in full, as JSONB returns it.
    if repr(value) == text and "e" not in text:
        return value
    return ExactNumber(text)


# Python converts at most sys.get_int_max_str_digits() (4,300) digits from text
# to an int (a guard against quadratic conversion); Decimal converts in linear time.
INT_MAX_DIGITS = sys.get_int_max_str_digits() or sys.maxsize


def _long_integer(text: str) -> int | Decimal:
    """A JSON integer (``parse_int``), when the document holds one too long for int()."""
    return int(text) if len(text.lstrip("-")) <= INT_MAX_DIGITS else ExactNumber(text)


_decode = json.JSONDecoder(parse_float=_number).decode
_decode_long_integers = json.JSONDecoder(parse_float=_number, parse_int=_long_integer).decode


def loads(text: str | bytes | bytearray) -> Any:
    """Decode JSON (text, or bytes in UTF-8/16/32) exactly; raises ``json.JSONDecodeError``.

    Bytes that are not valid in their encoding are a ``JSONDecodeError`` too,
    at the first bad character.
    """
    if not isinstance(text, str):
        raw = bytes(text)
        encoding = json.detect_encoding(raw)
        try:
            text = raw.decode(encoding, "surrogatepass")
        except UnicodeDecodeError as error:
            valid = raw[: error.start].decode(encoding, "replace")
            raise json.JSONDecodeError(f"Invalid {encoding}", valid, len(valid)) from None
    try:
        return _decode(text)
    except json.JSONDecodeError:
        raise
    except ValueError:
        # int() refused a long integer: rare, so only then the slower integer hook.
        return _decode_long_integers(text)


def decimal_text(value: Decimal) -> str:
    """A Decimal written out in full (``1E+3`` as ``1000``), as JSONB stores it."""
    return format(value, "f")


class _NotFastEncodable(Exception):
    """A Decimal in the document: the C encoder cannot write it exactly."""


def _default(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        raise _NotFastEncodable
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_encode = json.JSONEncoder(default=_default, separators=(",", ":"), ensure_ascii=False).encode
_encode_sorted = json.JSONEncoder(
    default=_default, separators=(",", ":"), ensure_ascii=False, sort_keys=True
).encode
_encode_string = json.encoder.encode_basestring  # C, when available (as json.dumps uses)


def _encode_exact(value: Any, sort_keys: bool) -> str:
    """What ``_encode`` writes, with Decimals written out in full (the rare path)."""
    if isinstance(value, str):
        return _encode_string(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a JSON number")
        return decimal_text(value)
    if isinstance(value, dict):
        items = sorted(value.items()) if sort_keys else value.items()
        return (
            "{"
            + ",".join(
                _encode_string(key if isinstance(key, str) else _encode(key))
                + ":"
                + _encode_exact(item, sort_keys)
                for key, item in items
            )
            + "}"
        )
    if isinstance(value, list | tuple):
        return "[" + ",".join(_encode_exact(item, sort_keys) for item in value) + "]"
    if value is None or isinstance(value, bool | int | float):
        return _encode(value)
    return _encode_exact(_default(value), sort_keys)


def dumps(value: Any, *, sort_keys: bool = False) -> str:
    """Compact JSON; UUIDs and datetimes as strings; Decimals exactly, written out in full."""
    try:
        return (_encode_sorted if sort_keys else _encode)(value)
    except _NotFastEncodable:
        return _encode_exact(value, sort_keys)


# -- exact numbers in responses ---------------------------------------------------------
# In a response an ExactNumber is first written as a JSON string: U+0000 and its
# digits. No stored text can hold U+0000 (PostgreSQL refuses it in text and
# JSONB, and the API in any input), so the route class
# (flowforge.api.jsonbody) can turn each such string back into the bare number.
NUMBER_MARK = "\x00"
_MARKED_NUMBER = re.compile(rb'"\\u0000(-?[0-9]+(?:\.[0-9]+)?)"')
_MARK_START = b'"\\u0000'


def unmark_numbers(body: bytes) -> bytes:
    """An encoded response with each marked number written as the bare number."""
    if _MARK_START not in body:
        return body
    return _MARKED_NUMBER.sub(rb"\1", body)
