"""The OpenAPI description: FastAPI's, completed with what the routes cannot say.

Routes declare their own models, statuses and headers. This adds, in one place,
what holds for every operation because of the layers around the routes:

* 400 (a body that is not JSON) and 413 (a body over the size limit,
  flowforge/api/limits.py) on every operation that takes a body; 413 on the
  others too, since the limit applies to every request;
* 503 with ``Retry-After`` on every product operation (the database is down);
* ``WWW-Authenticate`` on every 401;
* an example for every schema (flowforge/api/examples.py), and on every
  operation's request body and responses.

Operation ids are the routes' function names (``trigger_run``), see
``operation_id``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from flowforge.api.examples import SCHEMA_EXAMPLES
from flowforge.api.limits import MAX_BODY_BYTES
from flowforge.api.schemas import JSON_SCHEMAS

ERROR_REF = "#/components/schemas/ErrorResponse"
PRODUCT_PREFIX = "/api/v1/"

# status -> (description, example error)
ERRORS: dict[str, tuple[str, dict[str, Any]]] = {
    "400": (
        "The body is not valid JSON",
        {
            "code": "bad_request",
            "message": "The body is not valid JSON: Expecting value at line 1 column 10.",
            "details": {"line": 1, "column": 10, "position": 9},
        },
    ),
    "401": (
        "Missing, unknown, revoked or expired API key",
        {
            "code": "unauthorized",
            "message": "A valid API key is required: send `Authorization: Bearer <key>`.",
            "details": {},
        },
    ),
    "403": (
        "The key's scopes or the user's role do not allow this",
        {
            "code": "forbidden",
            "message": "This API key lacks the 'write' scope.",
            "details": {"required_scope": "write", "key_scopes": ["read"]},
        },
    ),
    "404": (
        "Not found (or not visible to this user)",
        {"code": "not_found", "message": "Workflow not found.", "details": {}},
    ),
    "409": (
        "Conflicts with the current state",
        {
            "code": "invalid_transition",
            "message": "Cannot complete a run that is pending.",
            "details": {"current_status": "pending", "requested_status": "completed"},
        },
    ),
    "413": (
        f"The body is larger than {MAX_BODY_BYTES} bytes",
        {
            "code": "payload_too_large",
            "message": f"The request body is larger than {MAX_BODY_BYTES} bytes.",
            "details": {"max_bytes": MAX_BODY_BYTES},
        },
    ),
    "422": (
        "Invalid request: each problem names its field",
        {
            "code": "validation_error",
            "message": "The request is not valid.",
            "details": {
                "problems": [
                    {"location": "body.name", "message": "String should have at least 1 character"}
                ]
            },
        },
    ),
    "503": (
        "The database is unavailable; retry after the given seconds",
        {
            "code": "database_unavailable",
            "message": "The database is unavailable right now; try again shortly.",
            "details": {},
        },
    ),
}
HEADERS: dict[str, dict[str, Any]] = {
    "401": {
        "WWW-Authenticate": {
            "description": "How to authenticate (RFC 6750).",
            "schema": {"type": "string", "examples": ['Bearer realm="flowforge"']},
        }
    },
    "503": {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "integer", "examples": [1]},
        }
    },
}


def _error_response(status: str, existing: dict[str, Any] | None) -> dict[str, Any]:
    description, example = ERRORS[status]
    response = existing or {"description": description}
    media = response.setdefault("content", {}).setdefault("application/json", {})
    media.setdefault("schema", {"$ref": ERROR_REF})
    media["example"] = {"error": example}
    if status in HEADERS:
        response.setdefault("headers", {}).update(HEADERS[status])
    return response


def _schema_name(schema: dict[str, Any]) -> str | None:
    """The component a (possibly nullable) schema refers to."""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    for option in schema.get("anyOf", []):
        name = _schema_name(option)
        if name is not None:
            return name
    return None


def _add_example(content: dict[str, Any]) -> None:
    media = content.get("application/json")
    if media is None or "example" in media:
        return
    name = _schema_name(media.get("schema", {}))
    if name in SCHEMA_EXAMPLES:
        media["example"] = SCHEMA_EXAMPLES[name]


def complete(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the statuses, headers and examples described in the module docstring."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(copy.deepcopy(JSON_SCHEMAS))
    for name, component in components.items():
        if name in SCHEMA_EXAMPLES:
            component["examples"] = [SCHEMA_EXAMPLES[name]]
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            responses = operation["responses"]
            if path.startswith(PRODUCT_PREFIX):
                statuses = {"401", "413", "503"} | (
                    {"400"} if "requestBody" in operation else set()
                )
                for status in statuses | (set(responses) & set(ERRORS)):
                    responses[status] = _error_response(status, responses.get(status))
            if "requestBody" in operation:
                _add_example(operation["requestBody"]["content"])
            for response in responses.values():
                _add_example(response.get("content", {}))
            operation["responses"] = dict(sorted(responses.items()))
    return schema


def operation_id(route: APIRoute) -> str:
    """The operation id of a route: its function's name, e.g. ``trigger_run``.

    Generated clients name their functions and modules after it (FastAPI's
    default, ``trigger_run_api_v1_workflows__workflow_id__runs_post``, would
    be theirs too). Route functions are named after what they do, uniquely
    across the app (tests/api/test_openapi.py checks it), so renaming one
    is a change of the API.
    """
    return route.name


def install_openapi(
    app: FastAPI, documentation_order: Callable[[], AbstractContextManager[None]] | None = None
) -> None:
    """Serve the completed description at /openapi.json (built once, on first request).

    `documentation_order`: puts the routes in the order the description lists
    them while it is built (the app matches them in another order: the hot
    routes first, flowforge/api/app.py)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            with documentation_order() if documentation_order else nullcontext():
                app.openapi_schema = complete(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


@contextmanager
def routes_reordered(*orders: tuple[list[Any], list[Any]]) -> Iterator[None]:
    """Each (routes, order) pair: `routes` (a router's list) holds `order` meanwhile."""
    saved = [list(routes) for routes, _ in orders]
    for routes, order in orders:
        routes[:] = order
    try:
        yield
    finally:
        for (routes, _), previous in zip(orders, saved, strict=True):
            routes[:] = previous
