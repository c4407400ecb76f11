"""Exact JSON bodies: no number is rounded on its way into or out of a route.

Starlette parses a request body with ``json.loads`` (floats: 12345678901234567890.5
would become 12345678901234567000) and Pydantic writes a Decimal as a string. The
product routes use :class:`ExactJSONRoute` instead: the body is read by
:func:`flowforge.core.json.loads`, and the exact numbers of a response (marked
strings, see :class:`flowforge.core.json.ExactNumber`) are written as numbers.
A body that is not JSON is a 400 (``flowforge.api.errors``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from flowforge.core import json as jsonutil


class ExactJSONRequest(Request):
    """A request whose JSON body keeps every number exact."""

    async def json(self) -> Any:
        try:
            return jsonutil.loads(await self.body())
        except RecursionError:
            # Valid JSON perhaps, but past Python's recursion limit (FastAPI would
            # answer "There was an error parsing the body").
            raise HTTPException(400, "The body is nested too deeply to be read.") from None


class ExactJSONRoute(APIRoute):
    """The route class of every product router: exact numbers in, exact numbers out."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_exactly(request: Request) -> Response:
            response = await handle(ExactJSONRequest(request.scope, request.receive))
            body = getattr(response, "body", None)  # none on a streaming response
            if isinstance(body, bytes):
                exact = jsonutil.unmark_numbers(body)
                if exact is not body:
                    response.body = exact
                    response.headers["content-length"] = str(len(exact))
            return response

        return handle_exactly
