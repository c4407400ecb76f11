"""The FastAPI application factory. The lifespan owns the connection pool."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from flowforge.api import health
from flowforge.api.errors import install_error_handlers
from flowforge.db.engine import DB, check_configuration

logger = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Starting the pool does not fail when PostgreSQL is down: the app serves
    # /healthz, answers 503 elsewhere, and connects once the database is back.
    await DB.start_connection_pool()
    try:
        yield
    finally:
        await DB.close_connection_pool()


def create_app() -> FastAPI:
    check_configuration()  # bad settings stop start-up here, with a readable message
    app = FastAPI(title="FlowForge", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(health.router)
    return app
