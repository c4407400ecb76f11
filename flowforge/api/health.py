"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from flowforge.db.readiness import NotReadyError, check_database

router = APIRouter(tags=["health"])

READINESS_TIMEOUT_SECONDS = 3.0


@router.get("/healthz", summary="Liveness: the process is up")
async def healthz() -> dict[str, str]:
    """Liveness only: never touches the database, so a database outage does
    not get a healthy process restarted."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: PostgreSQL answers through the pool and migrations are at head",
    responses={503: {"description": "Not ready", "content": {"application/json": {}}}},
)
async def readyz() -> JSONResponse:
    try:
        await check_database(deadline_seconds=READINESS_TIMEOUT_SECONDS)
    except NotReadyError as error:
        return JSONResponse({"postgres": f"error: {error}"}, status_code=503)
    return JSONResponse({"postgres": "ok"})
