"""FastAPI dependencies every route imports.

``Transaction`` gives a request exactly one database transaction: it commits
after the route returns and before the response is sent, and rolls back on
any exception. ``scope="function"`` is what puts the COMMIT before the
response: with FastAPI's default (request scope) the commit would run after
the response had gone out, and a failed commit would reach the client as 200.

``CurrentPrincipal`` is the authenticated caller (see flowforge/principal.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import asyncpg
from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from flowforge.api_keys import PresentedKey, authenticate, parse_key
from flowforge.db import replicas
from flowforge.db.engine import DB, SafeTransaction
from flowforge.errors import (
    CONNECTION_ERRORS,
    InvalidInputError,
    UnauthorizedError,
    translated_db_errors,
)
from flowforge.principal import Principal

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A replica's connection failing, or a query cancelled by a conflict with
# recovery (40001 on a standby): the read is retried on the primary.
REPLICA_FAILURES: tuple[type[Exception], ...] = (
    *CONNECTION_ERRORS,
    asyncpg.exceptions.SerializationError,
)


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


# For every other endpoint: the authenticated caller, with the request's one
# transaction (on the primary) open for the endpoint's queries. Routes take only
# this (or ReadPrincipal); domain functions reach the connection through Piccolo
# queries or DB.require_transaction(), never through a route parameter.
CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


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


async def _begin_on_replica(replica: replicas.Replica, token: int | None) -> SafeTransaction | None:
    """The read's transaction on `replica`, or None when its server has not
    replayed past `token` yet (the read then goes to the primary).

    Starting is bounded by ``DB_CONNECT_TIMEOUT``: behind PgBouncer a replica
    that just died makes a BEGIN wait in the pooler's queue (for its
    ``query_wait_timeout``) instead of failing, and that read belongs on the
    primary. A failure raises ReplicaLostError: the GET is replayed on the primary.
    """
    transaction = DB.transaction(source=replica.engine)
    try:
        async with asyncio.timeout(replica.engine.settings.connect_timeout):
            await transaction.__aenter__()
    except replicas.UNREACHABLE as error:
        # Down since its last check: this read goes to the primary instead.
        replica.mark_down(f"unreachable ({type(error).__name__})")
        replica.failures += 1
        raise replicas.ReplicaLostError(replica.name) from error
    if token is None:
        return transaction
    try:
        caught_up = await replicas.replayed_past(token)
    except BaseException as error:
        await transaction.__aexit__(type(error), error, error.__traceback__)
        if isinstance(error, REPLICA_FAILURES):
            replica.mark_down(f"connection lost ({type(error).__name__})")
            replica.failures += 1
            raise replicas.ReplicaLostError(replica.name) from error
        raise
    if caught_up:
        return transaction
    replica.behind_token += 1
    # Ended once, outside the try above: a failed end has already given the
    # connection back, and this read goes to the primary either way.
    try:
        await transaction.__aexit__(None, None, None)
    except REPLICA_FAILURES as error:
        replica.mark_down(f"connection lost ({type(error).__name__})")
        replica.failures += 1
    return None


async def read_transaction(
    request: Request,
    response: Response,
    key: Annotated[PresentedKey, Depends(presented_key)],
) -> AsyncIterator[Principal]:
    """The caller, and a transaction for a read-only endpoint: on a replica when one
    is usable (and has replayed past the request's consistency token, checked in the
    read's own transaction), else on the primary. Authentication always runs on the
    primary (see flowforge/db/replicas.py)."""
    token = _consistency_token(request)
    primary_only = request.scope.get("state", {}).get("flowforge_primary_only", False)
    replica = None if primary_only else replicas.REPLICAS.choose()
    async with translated_db_errors():
        if replica is None:
            async with DB.transaction():
                principal = await authenticate(key)
                if replicas.REPLICAS:
                    replicas.REPLICAS.primary_reads += 1
                    response.headers[replicas.SERVED_BY_HEADER] = "primary"
                yield principal
            return
        async with DB.transaction():
            principal = await authenticate(key)
    async with translated_db_errors():
        transaction = await _begin_on_replica(replica, token)
    if transaction is None:
        async with translated_db_errors(), DB.transaction():
            replicas.REPLICAS.primary_reads += 1
            response.headers[replicas.SERVED_BY_HEADER] = "primary"
            yield principal
        return
    try:
        response.headers[replicas.SERVED_BY_HEADER] = replica.name
        async with translated_db_errors(REPLICA_FAILURES):
            yield principal
    except REPLICA_FAILURES as error:
        await transaction.__aexit__(type(error), error, error.__traceback__)
        replica.mark_down(f"connection lost ({type(error).__name__})")
        replica.failures += 1
        raise replicas.ReplicaLostError(replica.name) from error
    except BaseException as error:
        await transaction.__aexit__(type(error), error, error.__traceback__)
        raise
    try:
        await transaction.__aexit__(None, None, None)  # COMMIT of a read-only transaction
    except REPLICA_FAILURES as error:
        replica.mark_down(f"connection lost ({type(error).__name__})")
        replica.failures += 1
        raise replicas.ReplicaLostError(replica.name) from error
    replica.reads += 1


# For read-only endpoints: the authenticated caller, with the request's read
# transaction (replica or primary) open for the endpoint's queries.
ReadPrincipal = Annotated[Principal, Depends(read_transaction, scope="function")]
