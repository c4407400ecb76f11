"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from flowforge.core.logs import describe_error, get_logger
from flowforge.db import replicas
from flowforge.db.engine import DB
from flowforge.db.readiness import NotReadyError, check_database
from flowforge.outbox import status

logger = get_logger(__name__)

router = APIRouter(tags=["health"])

READINESS_TIMEOUT_SECONDS = 3.0


class Liveness(BaseModel):
    status: Literal["ok"]


class OutboxHealth(BaseModel):
    lag_seconds: float = Field(ge=0, description="Age of the oldest unpublished event (0: none).")
    dead_lettered: int = Field(ge=0, description="Events the relay gave up on.")


class Ready(BaseModel):
    postgres: Literal["ok"]
    outbox: OutboxHealth | str = Field(
        description="Outbox details, or `error: <kind>` when they could not be read "
        "(which does not make the probe fail)."
    )


class NotReady(BaseModel):
    postgres: str = Field(
        pattern=r"^error: ", description="Why not, e.g. `error: 1 migration(s) not applied: ...`."
    )


@router.get("/healthz", summary="Liveness: the process is up", response_model=Liveness)
async def healthz() -> dict[str, str]:
    """Liveness only: never touches the database, so a database outage does
    not get a healthy process restarted."""
    return {"status": "ok"}


async def _outbox_details() -> status.OutboxHealth | str:
    """Outbox lag and dead letters; never decides readiness (see docs/decisions/04-outbox-relay.md)."""
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS), DB.transaction():
            health = await status.outbox_health()
        return health
    except Exception as error:  # details only: a failure here must not fail the probe
        logger.warning("readyz.outbox_probe_failed", error=describe_error(error))
        return f"error: {type(error).__name__}"


@router.get(
    "/readyz",
    summary="Readiness: PostgreSQL answers through the pool and migrations are at head",
    description=(
        "200 with `postgres: ok` when the database answers and the schema is at head, "
        "else 503. `outbox` adds details - `lag_seconds` (age of the oldest unpublished "
        "event) and `dead_lettered` - that never make the probe fail: the API can serve "
        "while the relay or broker is behind."
    ),
    response_model=None,
    responses={
        200: {"model": Ready, "description": "Ready"},
        503: {"model": NotReady, "description": "Not ready"},
    },
)
async def readyz() -> JSONResponse:
    try:
        await check_database(deadline_seconds=READINESS_TIMEOUT_SECONDS)
    except NotReadyError as error:
        return JSONResponse({"postgres": f"error: {error}"}, status_code=503)
    body: dict[str, Any] = {"postgres": "ok", "outbox": await _outbox_details()}
    if replicas.REPLICAS:
        # Details only: a skipped replica costs capacity, not correctness.
        body["replicas"] = replicas.REPLICAS.details()
    return JSONResponse(body)
