"""JSON responses serialised once, straight from the domain's records.

A hot route returning a model made the model from the record (validating every
field of every item), and FastAPI then checked it against the response model
and encoded it. The records are already right (typed, from the database), so the
hot run routes encode them instead, once, with pydantic-core's typed serializer
(as FastAPI encodes: the same JSON for UUIDs, datetimes and the exact numbers
of :mod:`flowforge.core.json`) for a ``TypedDict`` mirror of the response model:
only the model's fields are written, and nothing is validated. On a page of 50
runs that halves the serialisation's CPU (docs/benchmarks.md, "Pieces of the
request path"). The route's ``response_model`` still describes the body in the
OpenAPI schema (tests/api/test_openapi.py checks responses against it).
"""

from __future__ import annotations

import enum
import functools
import types
from collections.abc import Callable
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter
from starlette.responses import Response
from typing_extensions import TypedDict

_SKIPPED_HEADERS = frozenset({b"content-length", b"content-type"})

Encoder = Callable[[Any], bytes]


def _body_type(annotation: Any) -> Any:
    """`annotation` with each model as a TypedDict of its fields, each enum as str
    (records hold the values; a str enum member is a str too)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        fields = {
            name: _body_type(field.annotation) for name, field in annotation.model_fields.items()
        }
        return TypedDict(f"{annotation.__name__}Body", fields)  # type: ignore[operator]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return str
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is None or not args:
        return annotation
    inner = tuple(_body_type(arg) for arg in args)
    if origin is Union or origin is types.UnionType:
        return Union[inner]  # noqa: UP007 - built from a tuple
    if origin is list:
        return list[inner[0]]  # type: ignore[valid-type]
    if origin is dict:
        return dict[inner[0], inner[1]]  # type: ignore[valid-type]
    return annotation


@functools.cache
def body_encoder(model: type[BaseModel]) -> Encoder:
    """Encodes a record (a mapping with at least `model`'s fields) as a `model` body."""
    return TypeAdapter(_body_type(model)).dump_json


def json_response(
    content: Any, encode: Encoder, response: Response, status_code: int = 200
) -> Response:
    """`content` encoded once, with the status and headers that the route and its
    dependencies set on FastAPI's `response` (a returned Response replaces it:
    its headers would be lost otherwise)."""
    answer = Response(
        encode(content),
        status_code=response.status_code or status_code,
        media_type="application/json",
    )
    answer.raw_headers.extend(
        header for header in response.raw_headers if header[0] not in _SKIPPED_HEADERS
    )
    return answer
