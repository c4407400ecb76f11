"""Shared request/response building blocks for the API's Pydantic models.

Every request model forbids unknown fields, bounds every string and JSON
document, and rejects text PostgreSQL cannot store (NUL characters, lone
surrogates): bad input is a 422 naming the field, before any SQL runs.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from flowforge.jsonutil import dumps
from flowforge.pagination import DEFAULT_LIMIT, MAX_CURSOR_LENGTH, MAX_LIMIT

MAX_JSON_BYTES = 65_536
MAX_JSON_DEPTH = 32

# One line of text: no control characters (so no NUL, which PostgreSQL rejects).
SINGLE_LINE = r"^[^\x00-\x1f\x7f]*$"
# Free text: anything but NUL.
NO_NUL = r"^[^\x00]*$"


def _single_line(max_length: int) -> StringConstraints:
    """A required one-line string: trimmed, not blank, at most `max_length` characters."""
    return StringConstraints(
        strip_whitespace=True, min_length=1, max_length=max_length, pattern=SINGLE_LINE
    )


# Lengths match the columns in flowforge/db/tables.py.
WorkflowName = Annotated[str, _single_line(200)]
StepName = Annotated[str, _single_line(200)]
ActionType = Annotated[str, _single_line(100)]
KeyName = Annotated[str, _single_line(100)]
DisplayName = Annotated[str, _single_line(200)]
Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$"
    ),
]
Description = Annotated[str, StringConstraints(max_length=10_000, pattern=NO_NUL)]
ErrorText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=10_000, pattern=NO_NUL)
]


def _check_json(value: Any, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"is nested more than {MAX_JSON_DEPTH} levels deep")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain NUL characters (\\u0000)")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError("must not contain unpaired surrogates") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_json(key, depth + 1)
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must not contain NaN or Infinity")


def _check_json_object(value: dict[str, Any]) -> dict[str, Any]:
    _check_json(value, 0)
    if len(dumps(value).encode()) > MAX_JSON_BYTES:
        raise ValueError(f"must be at most {MAX_JSON_BYTES} bytes as JSON")
    return value


# A JSON object a client sends (inputs, outputs, configs): bounded and storable.
JsonObject = Annotated[
    dict[str, Any],
    AfterValidator(_check_json_object),
    Field(description=f"A JSON object, at most {MAX_JSON_BYTES} bytes encoded."),
]

Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT, description=f"Page size (1-{MAX_LIMIT}).")]
Cursor = Annotated[
    str | None,
    Field(
        max_length=MAX_CURSOR_LENGTH,
        pattern=r"^[A-Za-z0-9_-]*$",
        description="The `next_cursor` of the previous page; omit for the first page.",
    ),
]
DEFAULT_PAGE_SIZE = DEFAULT_LIMIT


class RequestModel(BaseModel):
    """Base of every request body: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """A page of items, newest first."""

    items: list[T]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable error code, e.g. `invalid_transition`.")
    message: str
    details: dict[str, Any]


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses, all in the one error shape."""
    descriptions = {
        401: "Missing, unknown, revoked or expired API key",
        403: "The key's scopes or the user's role do not allow this",
        404: "Not found (or not visible to this user)",
        409: "Conflicts with the current state",
        422: "Invalid request",
    }
    return {
        status: {"model": ErrorResponse, "description": descriptions.get(status, "Error")}
        for status in statuses
    }
