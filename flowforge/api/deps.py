"""FastAPI dependencies every route imports.

``Transaction`` gives a request exactly one database transaction: it commits
after the route returns and before the response is sent, and rolls back on
any exception. ``scope="function"`` is what puts the COMMIT before the
response: with FastAPI's default (request scope) the commit would run after
the response had gone out, and a failed commit would reach the client as 200.

``CurrentPrincipal`` is the authenticated caller (see flowforge/domain/principal.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from flowforge.core.errors import InvalidInputError, UnauthorizedError, translated_db_errors
from flowforge.db import replicas
from flowforge.db.engine import DB, SafeTransaction
from flowforge.domain.api_keys import PRINCIPALS, PresentedKey, authenticate, parse_key
from flowforge.domain.principal import Principal

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def db_transaction(request: Request) -> AsyncIterator[SafeTransaction]:
    """One transaction per request; driver errors leave it as domain errors.

    With replicas configured, a write response carries the consistency token
    (the primary's WAL position after this COMMIT) for later reads.
    """
    async with translated_db_errors():
        async with DB.transaction() as transaction:
            yield transaction
        if replicas.REPLICAS and request.method not in SAFE_METHODS:
            # Sent by replicas.ReplicaRouting: the response is built before this runs.
            request.state.flowforge_consistency = await replicas.commit_position()


Transaction = Annotated[SafeTransaction, Depends(db_transaction, scope="function")]


# `Authorization: Bearer <key>`; declared as a security scheme so /docs offers
# "Authorize". auto_error=False: a missing or malformed header is our 401, in
# our error shape, with WWW-Authenticate.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key: `Authorization: Bearer ff_<prefix>_<secret>`.",
)


async def presented_key(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> PresentedKey:
    """The bearer key, checked for form only: no database connection is taken.

    A request without a well-formed key is a 401 before it waits for the pool, so
    an exhausted pool or a database outage cannot delay or change that answer.
    The product router runs this before any of a route's own dependencies
    (flowforge/api/routes/__init__.py), the transaction included. ``async``
    although it awaits nothing: FastAPI runs a plain ``def`` dependency in its
    thread pool, a hop per request that, on a loaded machine, made even these
    401s wait for a worker thread (tests/api/test_probing_defects.py).
    """
    if credentials is None:
        raise UnauthorizedError()
    return parse_key(credentials.credentials)


async def current_principal(
    request: Request, key: Annotated[PresentedKey, Depends(presented_key)]
) -> AsyncIterator[Principal]:
    """The caller, with the request's one transaction open (one connection).

    A key authenticated within ``AUTH_CACHE_SECONDS`` is not looked up again
    (flowforge.domain.api_keys.PRINCIPALS), and its actor is set by the
    transaction's BEGIN; otherwise the key is authenticated in the transaction.
    """
    async with request_transaction(key) as principal:
        yield principal
    if replicas.REPLICAS and request.method not in SAFE_METHODS:
        # Sent by replicas.ReplicaRouting: the response is built before this runs.
        request.state.flowforge_consistency = await replicas.commit_position()


@asynccontextmanager
async def request_transaction(key: PresentedKey) -> AsyncIterator[Principal]:
    """A request's transaction (on the primary) with its caller: what a product
    route's dependency runs below HTTP (benchmarks/http_floor.py measures the
    HTTP layer against it).

    A remembered key (:data:`~flowforge.domain.api_keys.PRINCIPALS`) costs no
    statement, and its actor (``api_key:<id>``) is set by the BEGIN the
    transaction sends anyway (``DB.transaction(actor=...)``); otherwise the key
    is authenticated in the transaction, by the lookup statement.
    """
    known = PRINCIPALS.get(key)
    async with (
        translated_db_errors(),
        DB.transaction(actor=known.actor if known is not None else None),
    ):
        yield known if known is not None else await authenticate(key)


# For every other endpoint: the authenticated caller, with the request's one
# transaction (on the primary) open for the endpoint's queries. Routes take only
# this (or ReadPrincipal); domain functions reach the connection through Piccolo
# queries or DB.require_transaction(), never through a route parameter.
CurrentPrincipal = Annotated[Principal, Depends(current_principal, scope="function")]


def _consistency_token(request: Request) -> int | None:
    value = request.headers.get(replicas.CONSISTENCY_HEADER)
    if value is None:
        return None
    try:
        return replicas.parse_lsn(value.strip())
    except ValueError:
        raise InvalidInputError(
            f"{replicas.CONSISTENCY_HEADER} must be a token from an earlier write response "
            "(a WAL position such as 0/16B3748)."
        ) from None


async def read_transaction(
    request: Request,
    response: Response,
    key: Annotated[PresentedKey, Depends(presented_key)],
) -> AsyncIterator[Principal]:
    """The caller (authenticated on the primary), and a read-only transaction on a
    replica when one is usable, else on the primary (flowforge/db/replicas.py)."""
    primary_only = request.scope.get("state", {}).get("flowforge_primary_only", False)
    async with replicas.read_transaction(
        _consistency_token(request),
        lambda: authenticate(key),
        primary_only=primary_only,
        known=PRINCIPALS.get(key),
    ) as read:
        if read.served_by is not None:
            response.headers[replicas.SERVED_BY_HEADER] = read.served_by
        yield read.first


# For read-only endpoints: the authenticated caller, with the request's read
# transaction (replica or primary) open for the endpoint's queries.
ReadPrincipal = Annotated[Principal, Depends(read_transaction, scope="function")]
