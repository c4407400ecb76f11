"""The FastAPI wiring: lifespan-owned pool, one transaction per request, probes, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from flowforge.api.app import create_app
from flowforge.api.deps import Transaction
from flowforge.core.errors import NotFoundError
from flowforge.db.engine import DB
from flowforge.db.readiness import expected_migrations
from tests import support


def build_app() -> FastAPI:
    """The real app, plus routes that exercise the request transaction."""
    app = create_app()

    @app.post("/_test/users")
    async def create_user(transaction: Transaction, body: dict[str, Any]) -> dict[str, str]:
        row = await transaction.connection.fetchrow(
            "INSERT INTO users (email, display_name) VALUES ($1, 'x') RETURNING id",
            body["email"],
        )
        return {"id": str(row["id"])}

    @app.post("/_test/commit-fails")
    async def commit_fails(transaction: Transaction) -> dict[str, bool]:
        # A deferred constraint is checked at COMMIT: the route itself succeeds,
        # the COMMIT fails after it returned.
        await transaction.connection.execute(
            "INSERT INTO users (email, display_name) VALUES ('lost@example.com', 'x');"
            "CREATE TEMP TABLE t (x int UNIQUE DEFERRABLE INITIALLY DEFERRED) ON COMMIT DROP;"
            "INSERT INTO t VALUES (1), (1);"
        )
        return {"ok": True}

    @app.post("/_test/connection-dies")
    async def connection_dies(transaction: Transaction) -> dict[str, bool]:
        await transaction.connection.execute(
            "INSERT INTO users (email, display_name) VALUES ('gone@example.com', 'x')"
        )
        # The server's pid from SQL: behind PgBouncer get_server_pid() is the pooler's.
        pid = await transaction.connection.fetchval("SELECT pg_backend_pid()")
        await terminate(pid)
        return {"ok": True}

    @app.get("/_test/missing")
    async def missing(transaction: Transaction) -> None:
        raise NotFoundError("Workflow not found.", workflow_id="w1")

    @app.get("/_test/bug")
    async def bug() -> None:
        raise RuntimeError("secret internals")

    @app.get("/_test/raw-db-error")
    async def raw_db_error() -> None:
        await DB.fetch("INSERT INTO users (email, display_name) VALUES ('bad', 'x')")

    return app


async def terminate(pid: int) -> None:
    connection = await asyncpg.connect(DB.config["dsn"])
    try:
        await connection.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await connection.close()


def asgi(app: FastAPI) -> httpx.ASGITransport:
    # Like a real server: an unhandled error becomes our 500 response for the
    # client (and a log line), instead of being re-raised into the test.
    return httpx.ASGITransport(app=app, raise_app_exceptions=False)


@pytest.fixture
async def client(db: None) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app()
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=asgi(app), base_url="http://test") as c,
    ):
        yield c


async def count_users() -> int:
    return int((await DB.fetch("SELECT count(*) AS n FROM users"))[0]["n"])


async def test_healthz_is_liveness_only(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_ok_when_database_answers_and_schema_is_at_head(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "postgres": "ok",
        "outbox": {"lag_seconds": 0.0, "dead_lettered": 0},
    }


async def test_request_commits_before_the_response_is_sent(client: httpx.AsyncClient) -> None:
    response = await client.post("/_test/users", json={"email": "a@example.com"})
    assert response.status_code == 200
    # Visible to another session as soon as the client has its answer.
    connection = await asyncpg.connect(DB.config["dsn"])
    try:
        assert await connection.fetchval("SELECT count(*) FROM users") == 1
    finally:
        await connection.close()


async def test_constraint_violation_is_a_409_with_a_helpful_message(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/_test/users", json={"email": "a@example.com"})
    response = await client.post("/_test/users", json={"email": "A@EXAMPLE.COM"})
    assert response.status_code == 409
    assert response.json() == {
        "error": {
            "code": "conflict",
            "message": "A user with this email address already exists.",
            "details": {"constraint": "users_email_lower_key"},
        }
    }
    assert await count_users() == 1


async def test_failed_commit_is_an_error_response_and_nothing_is_written(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/_test/commit-fails")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"
    assert await count_users() == 0
    # The connection went back to the pool: the app still serves requests.
    for _ in range(DB.settings.pool_max_size + 1):
        assert (await client.post("/_test/commit-fails")).status_code == 409
    assert (await client.get("/readyz")).status_code == 200


async def test_connection_lost_before_commit_is_a_503_and_nothing_is_written(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/_test/connection-dies")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
    assert response.headers["retry-after"] == "1"
    assert await count_users() == 0
    assert (await client.post("/_test/users", json={"email": "b@example.com"})).status_code == 200


async def test_domain_error_maps_to_http_in_one_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/_test/missing")
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "code": "not_found",
            "message": "Workflow not found.",
            "details": {"workflow_id": "w1"},
        }
    }


async def test_unexpected_error_is_a_generic_500_without_internals(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/_test/bug")
    assert response.status_code == 500
    assert response.json()["error"] == {
        "code": "internal_error",
        "message": "An unexpected error occurred.",
        "details": {},
    }
    assert "secret" not in response.text


async def test_driver_error_outside_a_transaction_is_translated(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/_test/raw-db-error")
    assert response.status_code == 409
    assert response.json()["error"]["message"] == "The email address is not valid."
    assert "violates" not in response.text


async def test_validation_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.post("/_test/users", content=b"{not json")
    assert response.status_code == 422
    body = response.json()["error"]
    assert body["code"] == "validation_error"
    assert body["details"]["problems"]


async def test_unknown_route_is_a_json_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def readyz_on(url: str) -> httpx.Response:
    """GET /readyz of a fresh app (lifespan included) whose engine points at `url`."""
    async with support.global_engine_on(url):
        app = create_app()
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=asgi(app), base_url="http://test") as client,
        ):
            return await client.get("/readyz")


async def test_readyz_fails_when_migrations_are_not_at_head(database_url: str) -> None:
    latest = max(migration for app, migration in expected_migrations() if app == "flowforge")
    name = support.database_name("behind")
    url = await support.create_database(name)
    try:
        support.piccolo("migrations", "forwards", "all", database_url=url)
        support.piccolo(
            "migrations",
            "backwards",
            "flowforge",
            f"--migration_id={latest}",
            "--auto_agree",
            database_url=url,
        )
        response = await readyz_on(url)
    finally:
        await support.drop_database(name)
    assert response.status_code == 503
    assert response.json() == {"postgres": f"error: 1 migration(s) not applied: flowforge:{latest}"}


async def test_readyz_fails_on_an_unmigrated_database(database_url: str) -> None:
    name = support.database_name("empty")
    url = await support.create_database(name)
    try:
        response = await readyz_on(url)
    finally:
        await support.drop_database(name)
    assert response.status_code == 503
    assert response.json()["postgres"].startswith("error: ")
    assert "not applied" in response.json()["postgres"]
