"""Request ids, access log lines and request metrics (one ASGI middleware), and ``/metrics``.

:class:`RequestObservability` wraps the whole app:

* the request id is the client's ``X-Request-ID`` when it is safe (1-128 of
  ``A-Za-z0-9._:-``), else a new UUID4 hex; it is returned in the response's
  ``X-Request-ID`` and bound to every log line the request causes (structlog
  contextvars, so also uvicorn's, asyncpg's and piccolo's lines);
* one ``http.request`` line per request: method, route template, path, client
  address, status, duration and request id (uvicorn's access log is off);
* ``flowforge_http_requests_total`` and ``flowforge_http_request_duration_seconds``
  by method, **route template** (``/api/v1/runs/{run_id}``, never a raw path:
  bounded label values) and status; mounted apps' routes too (Piccolo Admin's
  ``/admin/api/tables/workflow_runs/{row_id}/``). Unmatched paths are ``<unmatched>``.

``GET /metrics`` reads the outbox's lag and dead letters at scrape time, within
:data:`OUTBOX_PROBE_TIMEOUT_SECONDS`; a failed or slow probe is reported as
``flowforge_outbox_probe_success 0`` and never fails the scrape.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import APIRouter
from fastapi.routing import iter_route_contexts
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flowforge.core import metrics
from flowforge.core.logs import (
    bound_request_context,
    describe_error,
    get_logger,
    reset_request_context,
)
from flowforge.core.settings import get_settings
from flowforge.db.engine import DB
from flowforge.outbox.status import OutboxHealth, outbox_health

access_log = get_logger("flowforge.access")
logger = get_logger("flowforge.core.metrics")

REQUEST_ID_HEADER = b"x-request-id"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
UNMATCHED = "<unmatched>"
OUTBOX_PROBE_TIMEOUT_SECONDS = 2.0


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID when it is safe to log and echo, else a new one."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            try:
                text = value.decode("ascii")
            except UnicodeDecodeError:
                break
            if REQUEST_ID_PATTERN.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


def route_templates(routes: Sequence[BaseRoute], prefix: str = "") -> dict[int, str]:
    """Every route of an app (included routers and mounted apps too) -> its full template.

    Keyed by the route object's id: that object is ``scope["route"]`` once it
    matched. FastAPI keeps an included router's prefix outside its routes, so
    the template comes from its route contexts (what the OpenAPI builder reads).
    """
    templates: dict[int, str] = {}
    endpoints: dict[int, str | None] = {}
    for context in iter_route_contexts(routes):
        route = context.original_route
        path = context.path_format or getattr(route, "path", "")
        templates[id(route)] = f"{prefix}{path}"
        # Plain Starlette routes of an included context (e.g. /openapi.json)
        # reach the scope as another object: their endpoint names them, when
        # no other route shares it.
        endpoint = getattr(route, "endpoint", None)
        if endpoint is not None:
            key = id(endpoint)
            endpoints[key] = None if key in endpoints else f"{prefix}{path}"
        if isinstance(route, Mount) and (inner := _routes_of(route.app)):
            templates.update(route_templates(inner, f"{prefix}{route.path}"))
    for key, template in endpoints.items():
        if template is not None:
            templates.setdefault(key, template)
    return templates


def _routes_of(app: Any) -> Sequence[BaseRoute] | None:
    """A mounted app's routes, found through the middleware wrapping it.

    Piccolo Admin is mounted behind FlowForge's query guard, and its ``/api``
    app behind an authentication middleware: each keeps the app it wraps in
    ``.app``. Without its routes a sub-application's requests are labelled
    ``<unmatched>``.
    """
    for _ in range(8):  # a few layers of middleware at most; never loop forever
        routes = getattr(app, "routes", None)
        if routes is not None:
            return routes  # type: ignore[no-any-return]
        app = getattr(app, "app", None)
        if app is None:
            break
    return None


def route_template(scope: Scope, templates: dict[int, str], root_path: str) -> str:
    """The matched route's template: bounded label values, never a raw path.

    FastAPI sets ``scope["route"]`` for routes, not for mounts: a request
    answered by a mounted app without routes of its own (static files, a
    sub-application) is labelled with its mount's template, found through the
    ``root_path`` the mount added, e.g. ``/docs/assets/{path}``.
    """
    route = scope.get("route")
    if route is not None and id(route) in templates:
        return templates[id(route)]
    endpoint = scope.get("endpoint")
    if endpoint is not None and id(endpoint) in templates:
        return templates[id(endpoint)]
    mounted = str(scope.get("root_path", ""))[len(root_path) :]
    if mounted:
        template = f"{mounted}/{{path}}"
        if template in templates.values():  # a known mount, not a raw path
            return template
    return UNMATCHED


@functools.lru_cache(maxsize=4096)
def _series(method: str, route: str, status: int) -> tuple[Any, Any]:
    """The request counter's and histogram's children for these labels (``labels()``
    costs more than the increment; label values are bounded, so this cache is too)."""
    labels = {"method": method, "route": route, "status": str(status)}
    return metrics.HTTP_REQUESTS.labels(**labels), metrics.HTTP_DURATION.labels(**labels)


class RequestObservability:
    """Request id, access log line and request metrics for every HTTP request."""

    def __init__(self, app: ASGIApp, access_log_sample: float | None = None) -> None:
        self.app = app
        self._templates: dict[int, str] | None = None
        # ACCESS_LOG_SAMPLE: the share of successful requests that get an access line.
        self.access_log_sample = (
            get_settings().access_log_sample if access_log_sample is None else access_log_sample
        )

    def _templates_of(self, scope: Scope) -> dict[int, str]:
        # Built at the first request: by then every route is in place.
        if self._templates is None:
            self._templates = route_templates(getattr(scope.get("app"), "routes", []))
        return self._templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope["headers"])
        templates = self._templates_of(scope)
        root_path = str(scope.get("root_path", ""))
        status = 500  # what the server answers if the app raises before responding
        response_started = False
        tokens = bound_request_context(request_id=request_id)

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != REQUEST_ID_HEADER
                ]
                headers.append((REQUEST_ID_HEADER, request_id.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Starlette's ServerErrorMiddleware answered (the app's handler
            # logged a bug's traceback, or translated a driver error) and then
            # re-raises for the server to log it again, without the request
            # id and as a traceback even for a translated 503. Once a response
            # went out, the error is handled: stop it here.
            if not response_started:
                raise
        finally:
            duration = time.perf_counter() - started
            route = route_template(scope, templates, root_path)
            counter, histogram = _series(scope["method"], route, status)
            counter.inc()
            histogram.observe(duration)
            sample = self.access_log_sample
            if status >= 400 or sample >= 1.0 or (sample > 0.0 and random.random() < sample):  # noqa: S311 - sampling, not a secret
                self._log_access(scope, route, status, duration)
            reset_request_context(tokens)

    @staticmethod
    def _log_access(scope: Scope, route: str, status: int, duration: float) -> None:
        client = scope.get("client")
        access_log.info(
            "http.request",
            method=scope["method"],
            route=route,
            path=scope["path"],
            # The peer, or behind a trusted proxy (uvicorn --proxy-headers with
            # FORWARDED_ALLOW_IPS) the client that X-Forwarded-For names.
            client=client[0] if client else None,
            status=status,
            duration_ms=round(duration * 1000, 2),
        )


class OutboxCollector(Collector):
    """The outbox figures read by the last scrape (set just before rendering)."""

    def __init__(self) -> None:
        self.health: OutboxHealth | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        health = self.health
        yield GaugeMetricFamily(
            "flowforge_outbox_probe_success",
            "1 when this scrape could read the outbox's lag and dead letters.",
            value=1 if health is not None else 0,
        )
        if health is None:
            return
        yield GaugeMetricFamily(
            "flowforge_outbox_lag_seconds",
            "Age of the oldest event waiting to be published (0 when drained).",
            value=health["lag_seconds"],
        )
        yield GaugeMetricFamily(
            "flowforge_outbox_dead_lettered",
            "Dead-lettered events (kept until requeued or deleted).",
            value=health["dead_lettered"],
        )


OUTBOX = OutboxCollector()
REGISTRY.register(OUTBOX)

router = APIRouter()


async def _probe_outbox() -> OutboxHealth | None:
    try:
        async with asyncio.timeout(OUTBOX_PROBE_TIMEOUT_SECONDS), DB.transaction():
            health = await outbox_health()
        return health
    except Exception as error:  # a scrape reports the failure; it never fails
        logger.warning("metrics.outbox_probe_failed", error=describe_error(error))
        return None


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus text exposition: HTTP, pool, outbox, relay and housekeeping metrics."""
    health = await _probe_outbox()
    # No await between these two lines: a concurrent scrape cannot interleave.
    OUTBOX.health = health
    body = generate_latest(REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
