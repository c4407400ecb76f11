"""The product API (`/api/v1`): thin routes — parse, call the domain, shape the response."""

from typing import Any

from fastapi import APIRouter, Depends

from flowforge.api.deps import presented_key
from flowforge.api.routes import api_keys, limits, runs, users, workflows

# Every product route needs a key. A router dependency runs before the route's
# own ones, so a missing or malformed key is a 401 before the transaction
# dependency takes a connection (the route reuses this result, it runs once).
router = APIRouter(prefix="/api/v1", dependencies=[Depends(presented_key)])
# Matched in this order, one route after another: the runs' routes (the hot
# paths) first. FastAPI's matching of an included route costs ~20k instructions
# a candidate: last, a run read paid ~0.8M instructions (a quarter of its
# request) to reach its route (docs/decisions/18-http-hot-path.md).
router.include_router(runs.router)
router.include_router(users.router)
router.include_router(api_keys.router)
router.include_router(workflows.router)
router.include_router(limits.router)

# The order /openapi.json lists them in (as before the matching order changed).
DOCUMENTED = (users.router, api_keys.router, workflows.router, runs.router, limits.router)


def documentation_order() -> list[Any]:
    """The product router's entries (one per included router) in documentation order."""
    return sorted(
        router.routes,
        key=lambda entry: next(
            (i for i, r in enumerate(DOCUMENTED) if getattr(entry, "original_router", None) is r),
            len(DOCUMENTED),
        ),
    )


__all__ = ["documentation_order", "router"]
