"""JSON responses serialised once, straight from the domain's records.

A hot route returning a model makes the model from the record (validating every
field of every item) and FastAPI then checks it against the response model and
encodes it. The records are already right (typed, from the database), so the
hot run routes encode them instead, once, with the same encoder FastAPI uses
(pydantic-core's ``to_json``: the same JSON for UUIDs, datetimes, enums and the
exact numbers of :mod:`flowforge.core.json`), keeping only the response model's
fields. The route's ``response_model`` still describes the body in the OpenAPI
schema (tests/api/test_openapi.py checks responses against it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_json
from starlette.responses import Response

_SKIPPED_HEADERS = frozenset({b"content-length", b"content-type"})


def fields_of(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields a response of `model` has, in its order."""
    return tuple(model.model_fields)


def shaped(values: Mapping[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """`values` with exactly `fields` (a record may carry more, e.g. internal keys)."""
    return {name: values[name] for name in fields}


def json_response(content: Any, response: Response, status_code: int = 200) -> Response:
    """`content` as a JSON response, with the status and headers that the route
    and its dependencies set on FastAPI's `response` (a returned Response
    replaces it: its headers would be lost otherwise)."""
    answer = Response(
        to_json(content),
        status_code=response.status_code or status_code,
        media_type="application/json",
    )
    answer.raw_headers.extend(
        header for header in response.raw_headers if header[0] not in _SKIPPED_HEADERS
    )
    return answer
