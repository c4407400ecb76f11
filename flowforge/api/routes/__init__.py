"""The product API (`/api/v1`): thin routes — parse, call the domain, shape the response."""

from fastapi import APIRouter, Depends

from flowforge.api.deps import presented_key
from flowforge.api.routes import api_keys, runs, users, workflows

# Every product route needs a key. A router dependency runs before the route's
# own ones, so a missing or malformed key is a 401 before the transaction
# dependency takes a connection (the route reuses this result, it runs once).
router = APIRouter(prefix="/api/v1", dependencies=[Depends(presented_key)])
router.include_router(users.router)
router.include_router(api_keys.router)
router.include_router(workflows.router)
router.include_router(runs.router)

__all__ = ["router"]
