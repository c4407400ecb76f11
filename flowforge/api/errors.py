"""The one translation from errors to HTTP responses.

Every error response has the same shape::

    {"error": {"code": "conflict", "message": "...", "details": {...}}}

Domain errors map by class; driver errors that escaped a transaction are
translated first (flowforge.core.errors.translate_db_error); anything else is a 500
with a generic message. Raw database text and tracebacks never reach a client.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Send

from flowforge.core.errors import (
    CONNECTION_ERRORS,
    AppError,
    ConflictError,
    DatabaseUnavailableError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    PreconditionFailedError,
    PreconditionRequiredError,
    UnauthorizedError,
    translate_db_error,
)

logger = logging.getLogger(__name__)

STATUS_BY_ERROR: list[tuple[type[AppError], int]] = [
    (UnauthorizedError, 401),
    (ForbiddenError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (PreconditionFailedError, 412),
    (PreconditionRequiredError, 428),
    (InvalidInputError, 422),
    (DatabaseUnavailableError, 503),
]


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


async def send_error(
    send: Send, status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> None:
    """Answer with the error shape from raw ASGI middleware (before FastAPI runs)."""
    body = json.dumps(error_body(code, message, details)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def status_for(error: AppError) -> int:
    for error_class, status in STATUS_BY_ERROR:
        if isinstance(error, error_class):
            return status
    return 500


# RFC 6750: a 401 tells the client how to authenticate.
WWW_AUTHENTICATE = 'Bearer realm="flowforge"'


def app_error_response(error: AppError) -> JSONResponse:
    status = status_for(error)
    headers: dict[str, str] | None = None
    if status == 503:
        headers = {"Retry-After": "1"}
    elif status == 401:
        headers = {"WWW-Authenticate": WWW_AUTHENTICATE}
    return JSONResponse(
        error_body(error.code, error.message, error.details), status_code=status, headers=headers
    )


async def handle_app_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, AppError)
    return app_error_response(error)


async def handle_unexpected(request: Request, error: Exception) -> JSONResponse:
    domain_error = translate_db_error(error)
    if domain_error is not None:
        return app_error_response(domain_error)
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        error_body("internal_error", "An unexpected error occurred."), status_code=500
    )


def malformed_json(error: RequestValidationError) -> JSONResponse | None:
    """A 400 saying where the body stopped being JSON, if that is the error.

    FastAPI reports a body jsonutil.loads refused as a validation error of type
    ``json_invalid`` at ``("body", <offset>)``, with the parser's message.
    """
    for item in error.errors():
        if item.get("type") != "json_invalid":
            continue
        reason = str(item.get("ctx", {}).get("error", "not JSON"))
        offset = item["loc"][-1] if isinstance(item["loc"][-1], int) else 0
        document = error.body if isinstance(error.body, str) else ""
        line = document.count("\n", 0, offset) + 1
        column = offset - document.rfind("\n", 0, offset)
        return JSONResponse(
            error_body(
                "bad_request",
                f"The body is not valid JSON: {reason} at line {line} column {column}.",
                {"line": line, "column": column, "position": offset},
            ),
            status_code=400,
        )
    return None


async def handle_validation(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    if (response := malformed_json(error)) is not None:
        return response
    problems = [
        {
            "location": ".".join(str(part) for part in item.get("loc", ())),
            "message": item.get("msg", "invalid value"),
        }
        for item in error.errors()
    ]
    return JSONResponse(
        error_body("validation_error", "The request is not valid.", {"problems": problems}),
        status_code=422,
    )


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> str:
    """Every method some route serves on this path (Starlette names only the first route's).

    Asked of the router itself, method by method, so routes of included routers count.
    """
    return ", ".join(
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    )


async def handle_http(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    headers = error.headers
    if error.status_code == 405:
        headers = {**(headers or {}), "Allow": allowed_methods(request)}
    code = {
        400: "bad_request",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
    }.get(error.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(error.detail)), status_code=error.status_code, headers=headers
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, handle_app_error)
    # Driver errors that escaped a transaction's translation are expected
    # failures (a constraint, a lost connection), not bugs: handled here, they
    # are answered without Starlette logging them as unhandled.
    expected_failures: tuple[type[Exception], ...] = (asyncpg.PostgresError, *CONNECTION_ERRORS)
    for error_class in expected_failures:
        app.add_exception_handler(error_class, handle_unexpected)
    app.add_exception_handler(RequestValidationError, handle_validation)
    app.add_exception_handler(StarletteHTTPException, handle_http)
    app.add_exception_handler(Exception, handle_unexpected)
