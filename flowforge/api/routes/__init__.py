"""The product API (`/api/v1`): thin routes — parse, call the domain, shape the response."""

from fastapi import APIRouter

from flowforge.api.routes import api_keys, runs, users, workflows

router = APIRouter(prefix="/api/v1")
router.include_router(users.router)
router.include_router(api_keys.router)
router.include_router(workflows.router)
router.include_router(runs.router)

__all__ = ["router"]
