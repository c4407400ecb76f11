"""The FastAPI application factory. The lifespan owns the connection pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp

from flowforge.api import health, observability, routes
from flowforge.api.admin import build_admin
from flowforge.api.docs import install_docs
from flowforge.api.errors import install_error_handlers
from flowforge.api.limits import BodySizeLimit
from flowforge.api.openapi import install_openapi, operation_id, routes_reordered
from flowforge.core import metrics
from flowforge.core.logs import configure_logging
from flowforge.db import replicas
from flowforge.db.engine import DB, check_configuration


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Starting the pool does not fail when PostgreSQL is down: the app serves
    # /healthz, answers 503 elsewhere, and connects once the database is back.
    await DB.start_connection_pool()
    read_replicas = replicas.configure(DB.settings)
    await read_replicas.start()
    try:
        yield
    finally:
        await read_replicas.stop()
        await DB.close_connection_pool()


class FlowForgeAPI(FastAPI):
    """FastAPI with request ids, access lines and request metrics around everything."""

    def build_middleware_stack(self) -> ASGIApp:
        # Outside Starlette's ServerErrorMiddleware (which add_middleware cannot
        # reach): unhandled errors' 500s get the request id header, are counted,
        # and their error line is logged with the request id.
        return observability.RequestObservability(super().build_middleware_stack())


def create_app() -> FastAPI:
    check_configuration()  # bad settings stop start-up here, with a readable message
    configure_logging()
    metrics.register_pool(DB)
    app = FlowForgeAPI(
        title="FlowForge",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        docs_url=None,  # FastAPI's pages load their assets from a CDN:
        redoc_url=None,  # install_docs serves local copies instead
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit)
    app.add_middleware(replicas.ReplicaRouting)
    # The product API first: routes are matched one after another (its own
    # order: flowforge/api/routes/__init__.py); health, metrics and docs after it.
    app.include_router(routes.router)
    product = app.router.routes[-1]
    app.include_router(health.router)
    app.include_router(observability.router)
    install_docs(app)
    app.mount("/admin/", build_admin())
    # /openapi.json lists the paths in their earlier order: health, docs, then
    # the product API (users, keys, workflows, runs), as clients and the fuzz
    # tests knew it; only the matching order changed.
    documented = [route for route in app.router.routes if route is not product]
    documented.insert(len(documented) - 1, product)  # before the admin mount
    install_openapi(
        app,
        lambda: routes_reordered(
            (app.router.routes, documented), (routes.router.routes, routes.documentation_order())
        ),
    )
    return app


API_DESCRIPTION = """
Workflows of ordered steps, their runs, and each step attempt.

**Auth:** `Authorization: Bearer ff_<prefix>_<secret>` (issue keys with
`POST /api/v1/api-keys`, or `piccolo flowforge create_api_key`). Scopes: `read`
for reads, `write` for changes, `admin` for users and other users' keys. Roles:
viewers are read-only; developers see and change their own workflows and runs;
admins everything. Another user's workflow or run is a 404, a missing scope or
role a 403.

**Errors** always have the shape
`{"error": {"code": "...", "message": "...", "details": {...}}}`.

**Lists** are newest first with keyset pagination: pass `next_cursor` back as
`cursor`.

**Piccolo Admin** (read-only) is at [/admin/](/admin/).
"""
