"""Metrics, request ids and access lines of the real app (lifespan included)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from flowforge.api.app import create_app
from flowforge.core.logs import formatter, get_logger
from flowforge.db.engine import DB
from tests.api.conftest import Caller, create_workflow
from tests.live import live_server
from tests.metrics_support import parse
from tests.support import json_log_lines

WORKFLOW_ROUTE = "/api/v1/workflows/{workflow_id}"


async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def requests_of(samples: dict[str, float], route: str, status: int, method: str = "GET") -> float:
    key = f'flowforge_http_requests_total{{method="{method}",route="{route}",status="{status}"}}'
    return samples.get(key, 0.0)


def latency_count(samples: dict[str, float], route: str, status: int) -> float:
    key = (
        "flowforge_http_request_duration_seconds_count"
        f'{{method="GET",route="{route}",status="{status}"}}'
    )
    return samples.get(key, 0.0)


async def test_requests_are_counted_and_timed_by_route_template_and_status(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    workflow = await create_workflow(client, developer)
    before = await scrape(client)
    for _ in range(2):
        found = await client.get(f"/api/v1/workflows/{workflow['id']}", headers=developer.headers)
        assert found.status_code == 200
    missing = await client.get(f"/api/v1/workflows/{uuid.uuid4()}", headers=developer.headers)
    assert missing.status_code == 404
    assert (await client.get("/no/such/path")).status_code == 404
    assert (await client.get("/docs/assets/favicon.png")).status_code == 200
    assert (await client.get("/openapi.json")).status_code == 200
    after = await scrape(client)

    assert requests_of(after, WORKFLOW_ROUTE, 200) - requests_of(before, WORKFLOW_ROUTE, 200) == 2
    assert requests_of(after, WORKFLOW_ROUTE, 404) - requests_of(before, WORKFLOW_ROUTE, 404) == 1
    assert (
        latency_count(after, WORKFLOW_ROUTE, 200) - latency_count(before, WORKFLOW_ROUTE, 200) == 2
    )
    assert requests_of(after, "<unmatched>", 404) - requests_of(before, "<unmatched>", 404) == 1
    # A mounted app without routes of its own: its mount's template.
    assets = "/docs/assets/{path}"
    assert requests_of(after, assets, 200) - requests_of(before, assets, 200) == 1
    spec = "/openapi.json"  # a plain Starlette route
    assert requests_of(after, spec, 200) - requests_of(before, spec, 200) == 1
    # Templates only: no raw path (an id) ever becomes a label value.
    assert not [
        key for key in after if workflow["id"] in key or "/no/such" in key or "favicon" in key
    ]
    # The scrape itself is counted under its route.
    assert requests_of(after, "/metrics", 200) >= 1


async def test_pool_gauges_show_in_use_and_waiting_and_a_stuck_probe_never_fails_the_scrape(
    client: httpx.AsyncClient,
) -> None:
    assert DB.pool is not None
    idle = await scrape(client)
    assert idle["flowforge_db_pool_up"] == 1
    assert idle["flowforge_db_pool_max_size"] == DB.pool.get_max_size()
    assert idle["flowforge_db_pool_waiting"] == 0
    assert idle["flowforge_outbox_probe_success"] == 1

    held = [await DB.pool.acquire() for _ in range(DB.pool.get_max_size())]
    blocked = asyncio.create_task(DB.fetch("SELECT 1"))  # waits for a free connection
    try:
        await asyncio.sleep(0.05)
        full = await scrape(client)  # its outbox probe cannot get a connection either
        assert full["flowforge_db_pool_in_use"] == DB.pool.get_max_size()
        assert full["flowforge_db_pool_size"] == DB.pool.get_max_size()
        assert full["flowforge_db_pool_waiting"] == 1
        assert full["flowforge_outbox_probe_success"] == 0
        assert "flowforge_outbox_lag_seconds" not in full  # unknown, not a stale value
    finally:
        for connection in held:
            await DB.pool.release(connection)
    assert (await blocked)[0][0] == 1
    assert (await scrape(client))["flowforge_db_pool_waiting"] == 0


async def test_outbox_lag_and_dead_letters_are_read_at_scrape_time(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    await DB.fetch("UPDATE outbox SET published_at = now()")  # the fixtures' events
    drained = await scrape(client)
    assert drained["flowforge_outbox_lag_seconds"] == 0
    assert drained["flowforge_outbox_dead_lettered"] == 0
    await create_workflow(client, developer)  # writes workflow.created, unpublished
    await create_workflow(client, developer, name="Second")
    await DB.fetch(
        "UPDATE outbox SET created_at = now() - interval '90 seconds', attempts = 10, "
        "last_error = 'rejected', "
        "dead_lettered_at = now() WHERE event_type = 'workflow.created' "
        "AND payload->>'name' = 'Second'"
    )
    await DB.fetch(
        "UPDATE outbox SET created_at = now() - interval '42 seconds' "
        "WHERE dead_lettered_at IS NULL"
    )
    waiting = await scrape(client)
    assert 42 <= waiting["flowforge_outbox_lag_seconds"] < 60
    assert waiting["flowforge_outbox_dead_lettered"] == 1


# -- request ids and log lines --------------------------------------------------------


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Every log line of the process, as the production formatter writes it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter("json"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


@pytest.fixture
async def logging_client(db: None) -> AsyncIterator[httpx.AsyncClient]:
    """The app plus a route that logs through structlog and through a plain stdlib logger."""
    app = create_app()

    @app.get("/_test/logs")
    async def logs_something() -> dict[str, bool]:
        get_logger("flowforge.test").info("test.structlog_line", detail="from the route")
        logging.getLogger("some.library").warning("a plain stdlib line")
        return {"ok": True}

    @app.get("/_test/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as c,
    ):
        yield c


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_request_id_is_accepted_returned_and_on_every_line_the_request_causes(
    logging_client: httpx.AsyncClient, json_lines: io.StringIO
) -> None:
    response = await logging_client.get("/_test/logs", headers={"X-Request-ID": "req-42.a:b_c"})
    assert response.headers["x-request-id"] == "req-42.a:b_c"
    caused = [line for line in lines_of(json_lines) if line.get("request_id") == "req-42.a:b_c"]
    assert {line["event"] for line in caused} == {
        "test.structlog_line",
        "a plain stdlib line",
        "http.request",
    }
    (access,) = [line for line in caused if line["event"] == "http.request"]
    assert access["logger"] == "flowforge.access"
    assert access["level"] == "info"
    assert (access["method"], access["route"], access["path"]) == (
        "GET",
        "/_test/logs",
        "/_test/logs",
    )
    assert access["status"] == 200
    assert access["duration_ms"] >= 0
    assert access["timestamp"].endswith("Z")


async def test_an_unhandled_error_is_one_line_with_its_request_id_and_a_500_with_the_header(
    logging_client: httpx.AsyncClient, json_lines: io.StringIO
) -> None:
    response = await logging_client.get("/_test/boom", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "boom-1"
    lines = lines_of(json_lines)
    assert {line.get("request_id") for line in lines if line["logger"] != "httpx"} == {"boom-1"}
    (error,) = [line for line in lines if "exception" in line]
    assert error["level"] == "error"
    assert "RuntimeError: a bug" in error["exception"]
    (access,) = [line for line in lines if line["event"] == "http.request"]
    assert (access["route"], access["status"]) == ("/_test/boom", 500)


@pytest.mark.parametrize(
    "sent",
    ["x" * 129, "has space", "semi;colon", "nul\x00byte", "émoji", ""],
    ids=["too-long", "space", "semicolon", "nul", "non-ascii", "empty"],
)
async def test_an_unsafe_request_id_is_replaced_by_a_generated_one(
    logging_client: httpx.AsyncClient, json_lines: io.StringIO, sent: str
) -> None:
    headers = [(b"x-request-id", sent.encode("utf-8"))]
    response = await logging_client.get("/healthz", headers=headers)
    assert response.status_code == 200
    generated = response.headers["x-request-id"]
    assert generated != sent
    assert len(generated) == 32 and int(generated, 16) >= 0
    access = [line for line in lines_of(json_lines) if line["logger"] == "flowforge.access"]
    assert [line["request_id"] for line in access] == [generated]


async def test_without_a_request_id_each_request_gets_its_own(
    logging_client: httpx.AsyncClient,
) -> None:
    first = await logging_client.get("/healthz")
    second = await logging_client.get("/healthz")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


# -- no secret in any line ------------------------------------------------------------


def key_prefix(key: str) -> str:
    """``ff_<prefix>`` of ``ff_<prefix>_<secret>`` (the secret may contain ``_``)."""
    return "_".join(key.split("_", 2)[:2])


def with_password(url: str, password: str) -> str:
    """`url` with `password` as its password (trust auth accepts any)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:{password}@{host}"))


async def test_no_api_key_password_or_dsn_password_in_any_log_line(
    database_url: str, admin: Caller, tmp_path: Path
) -> None:
    dsn_password = "dsn-Pw-7c1e9b"
    admin_password = "admin-Pw-log-test-4f8a"
    log = tmp_path / "uvicorn.log"
    wrong_key = f"{key_prefix(admin.key)}_not-the-secret-at-all"
    with live_server(
        with_password(database_url, dsn_password),
        log,
        LOG_FORMAT="json",
        FLOWFORGE_ADMIN_PASSWORD=admin_password,
    ) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            created = await client.post(
                "/api/v1/api-keys",
                json={"name": "laptop", "scopes": ["read"]},
                headers=admin.headers,
            )
            assert created.status_code == 201
            new_key = created.json()["key"]
            listed = await client.get("/api/v1/users", headers=admin.headers)
            assert listed.status_code == 200
            refused = await client.get(
                "/api/v1/users", headers={"Authorization": f"Bearer {wrong_key}"}
            )
            assert refused.status_code == 401
            # Careless clients: a key in the query string, a key as the request id.
            in_query = await client.get(f"/api/v1/workflows?api_key={new_key}")
            assert in_query.status_code == 401
            as_request_id = await client.get("/healthz", headers={"X-Request-ID": new_key})
            assert as_request_id.headers["x-request-id"] == new_key  # echoed to its sender
    text = log.read_text()
    lines = json_log_lines(text)
    access = [line for line in lines if line["event"] == "http.request"]
    assert len(access) >= 5  # the lines were written: they hold no secret below
    secrets = [admin.key, new_key, wrong_key, dsn_password, admin_password]
    secrets += [key.split("_", 2)[2] for key in (admin.key, new_key, wrong_key)]
    for secret in secrets:
        assert secret not in text
    masked = [line["request_id"] for line in access if line["path"] == "/healthz"]
    assert masked == [f"{key_prefix(new_key)}_***"]
