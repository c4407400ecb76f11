"""FastAPI dependencies every route imports.

``Transaction`` gives a request exactly one database transaction: it commits
after the route returns and before the response is sent, and rolls back on
any exception. ``scope="function"`` is what puts the COMMIT before the
response: with FastAPI's default (request scope) the commit would run after
the response had gone out, and a failed commit would reach the client as 200.

``CurrentPrincipal`` is the authenticated caller (see flowforge/principal.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from flowforge.api_keys import PresentedKey, authenticate, parse_key
from flowforge.db.engine import DB, SafeTransaction
from flowforge.errors import UnauthorizedError, translated_db_errors
from flowforge.principal import Principal


async def db_transaction() -> AsyncIterator[SafeTransaction]:
    """One transaction per request; driver errors leave it as domain errors."""
    async with translated_db_errors(), DB.transaction() as transaction:
        yield transaction


Transaction = Annotated[SafeTransaction, Depends(db_transaction, scope="function")]


# `Authorization: Bearer <key>`; declared as a security scheme so /docs offers
# "Authorize". auto_error=False: a missing or malformed header is our 401, in
# our error shape, with WWW-Authenticate.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key: `Authorization: Bearer ff_<prefix>_<secret>`.",
)


def presented_key(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> PresentedKey:
    """The bearer key, checked for form only: no database connection is taken.

    A request without a well-formed key is a 401 before it waits for the pool, so
    an exhausted pool or a database outage cannot delay or change that answer.
    The product router runs this before any of a route's own dependencies
    (flowforge/api/routes/__init__.py), the transaction included.
    """
    if credentials is None:
        raise UnauthorizedError()
    return parse_key(credentials.credentials)


async def current_principal(
    key: Annotated[PresentedKey, Depends(presented_key)], transaction: Transaction
) -> Principal:
    """The caller, authenticated in the request's own transaction (one connection)."""
    return await authenticate(key)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
