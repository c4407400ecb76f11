"""Shared request/response building blocks for the API's Pydantic models.

Every request model forbids unknown fields, bounds every string and JSON
document, and rejects text PostgreSQL cannot store (NUL characters, lone
surrogates): bad input is a 422 naming the field, before any SQL runs.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Generic, TypeVar

from annotated_types import GroupedMetadata
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from flowforge.core.json import dumps
from flowforge.domain.pagination import CURSOR_PATTERN, DEFAULT_LIMIT, MAX_CURSOR_LENGTH, MAX_LIMIT

MAX_JSON_BYTES = 65_536
MAX_JSON_DEPTH = 32

# -- text -------------------------------------------------------------------------------
NO_NUL = r"^[^\x00]*$"
# Control characters (C0, DEL, C1): never in one-line text. NUL cannot be stored
# at all; the others are terminal escapes and invisible line breaks.
CONTROLS = r"\x00-\x1f\x7f-\x9f"
# Free text keeps tab, line feed and carriage return.
TEXT_CONTROLS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
# Whitespace that is not a control character (what trimming removes besides them).
SPACES = r" \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def _no_controls(forbidden: str, what: str, *, strip: bool = False) -> Callable[[Any], Any]:
    found = re.compile(f"[{forbidden}]")

    def check(value: Any) -> Any:
        # Before trimming, so a trailing control character is refused, not dropped.
        if isinstance(value, str):
            if found.search(value):
                raise ValueError(f"must not contain {what}")
            if strip:
                return value.strip()
        return value

    return check


@dataclass(frozen=True)
class Text(GroupedMetadata):
    """The one constrained text type of the API: ``Annotated[str, Text(200)]``.

    Refuses control characters (one line: all of them; `multiline`: all but tab,
    line feed and carriage return) with a message naming the field, before any
    SQL runs; trims surrounding whitespace (`strip`); `min_length` counts after
    trimming, so a required text cannot be blank. The JSON Schema `pattern`
    says the same, so clients and fuzzers see the rule the server applies.
    """

    max_length: int
    min_length: int = 1
    multiline: bool = False
    strip: bool = True

    def __iter__(self) -> Iterator[Any]:
        forbidden = TEXT_CONTROLS if self.multiline else CONTROLS
        what = (
            "control characters other than tab and line breaks"
            if self.multiline
            else "control characters (such as NUL or a line break)"
        )
        blank = f"{SPACES}\\t\\n\\r" if self.multiline else SPACES
        pattern = (
            f"^[^{forbidden}]*[^{forbidden}{blank}][^{forbidden}]*$"
            if self.min_length and self.strip
            else f"^[^{forbidden}]*$"
        )
        yield Field(
            min_length=self.min_length,
            max_length=self.max_length,
            json_schema_extra={"pattern": pattern},
        )
        # Wraps the above: checked and trimmed first, then measured (not blank).
        yield BeforeValidator(_no_controls(forbidden, what, strip=self.strip))


# Lengths match the columns in flowforge/db/tables.py.
WorkflowName = Annotated[str, Text(200)]
StepName = Annotated[str, Text(200)]
ActionType = Annotated[str, Text(100)]
QueueName = Annotated[str, Text(64)]
LimitName = Annotated[str, Text(100)]
KeyName = Annotated[str, Text(100)]
DisplayName = Annotated[str, Text(200)]
Description = Annotated[str, Text(10_000, min_length=0, multiline=True, strip=False)]
ErrorText = Annotated[str, Text(10_000, multiline=True)]
Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$"
    ),
    BeforeValidator(_no_controls(CONTROLS, "control characters")),
    Field(
        json_schema_extra={
            "pattern": f"^[{SPACES}]*[^@\\s{CONTROLS}]+@[^@\\s{CONTROLS}]+[{SPACES}]*$"
        },
        examples=["grace@example.com"],
    ),
]

# -- timestamps ---------------------------------------------------------------------------
EARLIEST_YEAR = 1970
LATEST_YEAR = 2199


def _sane_timestamp(value: datetime.datetime) -> datetime.datetime:
    # Judged on the year as written, so the rule and the schema's pattern agree;
    # far enough from datetime's limits that converting to UTC cannot overflow
    # (0001-01-01 would be stored as -infinity).
    if not EARLIEST_YEAR <= value.year <= LATEST_YEAR:
        raise ValueError(f"must be in the years {EARLIEST_YEAR} to {LATEST_YEAR}")
    return value


def _timestamp_text(value: Any) -> Any:
    # Not a number of seconds (pydantic's lax mode would take one): the schema says string.
    if not isinstance(value, str | datetime.datetime):
        raise ValueError("must be an RFC 3339 date-time string, e.g. 2026-11-30T09:30:00Z")
    return value


# Every timestamp a client sends: an RFC 3339 string with a time zone, in a sane range.
Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_timestamp_text),
    AfterValidator(_sane_timestamp),
    Field(
        json_schema_extra={"pattern": r"^(19[7-9][0-9]|2[01][0-9]{2})-"},
        examples=["2026-11-30T09:30:00Z"],
    ),
]


# PostgreSQL's numeric (JSONB's numbers) holds at most this many digits after the
# decimal point; the 131,072 before it are more than a document may hold.
NUMERIC_MAX_SCALE = 16_383


def _exact_number_length(value: Decimal) -> int:
    """The length of a number the decoder kept exact (flowforge.core.json), written out in full."""
    if not value.is_finite():
        raise ValueError("must not contain NaN or Infinity")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    if -exponent > NUMERIC_MAX_SCALE:
        raise ValueError(
            f"must not contain numbers with more than {NUMERIC_MAX_SCALE} digits "
            "after the decimal point"
        )
    fraction = max(-exponent, 0)
    return sign + max(len(digits) + exponent, 1) + (fraction + 1 if fraction else 0)


def _check_json(value: Any, depth: int) -> int:
    """Refuse what PostgreSQL cannot store; return how long the exact numbers are.

    Exact numbers (Decimals) count written out in full, as JSONB stores and
    returns them: `1e60000` is six bytes in a request and 60,001 in a response.
    """
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
        length = 0
        for key, item in value.items():
            _check_json(key, depth + 1)
            length += _check_json(item, depth + 1)
        return length
    elif isinstance(value, list):
        length = 0
        for item in value:
            length += _check_json(item, depth + 1)
        return length
    elif isinstance(value, float) and not math.isfinite(value):
        # The literals NaN, Infinity and -Infinity (Python's json reads them; JSON has none).
        raise ValueError("must not contain NaN or Infinity")
    elif isinstance(value, Decimal):
        return _exact_number_length(value)
    return 0


def _check_json_object(value: dict[str, Any]) -> dict[str, Any]:
    # The numbers first: they bound the work of encoding the document to measure it.
    if _check_json(value, 0) > MAX_JSON_BYTES or len(dumps(value).encode()) > MAX_JSON_BYTES:
        raise ValueError(f"must be at most {MAX_JSON_BYTES} bytes as JSON")
    return value


# A JSON object a client sends (inputs, outputs, configs): bounded and storable.
# Described as generators understand it (flowforge/api/openapi.py adds the
# component): an object whose values are any JSON, not a recursive union of
# JSON types, which client generators cannot parse (openapi-python-client drops
# every model that uses one). So the schema states the rule on top-level keys;
# NUL in nested keys and strings, unpaired surrogates, the byte size and the
# depth are in the description, and checked here.
JSON_SCHEMAS: dict[str, dict[str, Any]] = {
    "JsonObject": {
        "type": "object",
        "description": f"A JSON object whose values are any JSON, at most {MAX_JSON_BYTES} "
        f"bytes encoded, {MAX_JSON_DEPTH} levels deep; no NUL (\\u0000) or unpaired "
        "surrogate in any key or string, at any depth.",
        "propertyNames": {"pattern": NO_NUL},
        "additionalProperties": True,
        "examples": [{"date": "2026-11-29", "regions": ["emea", "amer"], "dry_run": False}],
    },
}

JsonObject = Annotated[
    dict[str, Any],
    AfterValidator(_check_json_object),
    # allOf: pydantic cannot resolve a bare $ref to a component it did not make.
    WithJsonSchema({"allOf": [{"$ref": "#/components/schemas/JsonObject"}]}),
]


def json_integer(value: Any) -> Any:
    # JSON Schema's integer: 3 and 3.0, never true or "3" (lax int would take both).
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("must be an integer")
    return value


# An integer in a JSON body.
Integer = Annotated[int, BeforeValidator(json_integer)]


def json_number(value: Any) -> Any:
    # JSON Schema's number: never true or "0.5" (lax float would take both, and
    # the database's workflow_steps_retry_policy_valid refuses them).
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("must be a number")
    return value


# A number in a JSON body.
Number = Annotated[float, BeforeValidator(json_number)]

# A step's position. The bounds constrain the int inside the validator: added
# to `Integer`, pydantic would describe them with its own `ge`/`le` keywords,
# not JSON Schema's `minimum`/`maximum`.
MAX_STEP_POSITION = 1_000_000
StepPosition = Annotated[int, Field(ge=0, le=MAX_STEP_POSITION), BeforeValidator(json_integer)]

# A workflow version's number (workflow_versions.version: a PostgreSQL integer).
MAX_VERSION = 2**31 - 1
VersionNumber = Annotated[int, Field(ge=1, le=MAX_VERSION), BeforeValidator(json_integer)]

# The run queue's capacities (PostgreSQL integers): a workflow's max_concurrency
# (>= 1) and a concurrency limit's max_running (>= 0: 0 pauses).
MaxConcurrency = Annotated[int, Field(ge=1, le=2**31 - 1), BeforeValidator(json_integer)]
MaxRunning = Annotated[int, Field(ge=0, le=2**31 - 1), BeforeValidator(json_integer)]

Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT, description=f"Page size (1-{MAX_LIMIT}).")]
Cursor = Annotated[
    str | None,
    Field(
        max_length=MAX_CURSOR_LENGTH,
        pattern=CURSOR_PATTERN,
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
        412: "If-Match names a revision that is not the workflow's current one",
        428: "If-Match is required: send the ETag of your last GET",
        422: "Invalid request",
    }
    return {
        status: {"model": ErrorResponse, "description": descriptions.get(status, "Error")}
        for status in statuses
    }


# -- the run queue (issue 18) -------------------------------------------------------------


class Backoff(RequestModel):
    """Exponential backoff between attempts: initial * multiplier ** (attempt - 1), capped."""

    initial_seconds: Number = Field(default=1.0, gt=0, le=86_400)
    max_seconds: Number = Field(default=300.0, gt=0, le=30 * 86_400)
    multiplier: Number = Field(default=2.0, ge=1, le=10)

    @model_validator(mode="after")
    def _ordered(self) -> Backoff:
        if self.max_seconds < self.initial_seconds:
            raise ValueError("max_seconds must be at least initial_seconds")
        return self


class RetryPolicy(RequestModel):
    """A step's retry policy (flowforge.domain.retries); `{}` is one attempt, no retry."""

    max_attempts: Annotated[int, Field(ge=1, le=100), BeforeValidator(json_integer)] = Field(
        default=1, description="Attempts in all (1: none)."
    )
    backoff: Backoff = Field(default_factory=Backoff)
    jitter: Number = Field(
        default=0.0, ge=0, le=1, description="Up to this fraction of the backoff is added."
    )
