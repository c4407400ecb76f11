"""Defects found by probing the API with hostile requests (issue 9): each one reproduced.

Each test is the probe that found the defect, made into an assertion about
what a client must get instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from flowforge.db.engine import DB
from flowforge.db.tables import Role
from tests.api.conftest import Caller, create_workflow, make_caller, trigger


def problem_locations(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    return [item["location"] for item in response.json()["error"]["details"]["problems"]]


# -- 1. idempotent replay with numbers JSONB normalises -------------------------------------


@pytest.mark.parametrize(
    "number", ["1e16", "1e22", "-0.0", "1.7976931348623157e308", "-1e-400", "1.0", "2.50"]
)
async def test_idempotent_retry_with_numbers_jsonb_normalises_is_a_replay(
    client: httpx.AsyncClient, developer: Caller, number: str
) -> None:
    workflow = await create_workflow(client, developer)
    body = f'{{"inputs": {{"n": {number}, "nested": [{number}]}}}}'.encode()
    headers = {
        **developer.headers,
        "Idempotency-Key": f"retry-{number}",
        "Content-Type": "application/json",
    }
    url = f"/api/v1/workflows/{workflow['id']}/runs"
    first = await client.post(url, content=body, headers=headers)
    assert first.status_code == 201, first.text
    again = await client.post(url, content=body, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    # Different inputs with the same key are still a conflict.
    other = await client.post(url, content=b'{"inputs": {"n": 7}}', headers=headers)
    assert other.status_code == 409
    # ... and so is true against 1 (JSON, not Python, equality).
    key = {**headers, "Idempotency-Key": f"bool-{number}"}
    assert (await client.post(url, json={"inputs": {"b": True}}, headers=key)).status_code == 201
    assert (await client.post(url, json={"inputs": {"b": 1}}, headers=key)).status_code == 409


# -- 2. a key cannot outlive the key that made it ---------------------------------------------


async def test_a_key_cannot_create_a_key_that_outlives_it(
    client: httpx.AsyncClient, db: None
) -> None:
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
    parent = await make_caller("short@example.com", Role.DEVELOPER, expires_at=soon)
    never = await client.post(
        "/api/v1/api-keys", json={"name": "forever", "scopes": ["read"]}, headers=parent.headers
    )
    assert problem_locations(never) == ["body.expires_at"]
    assert "cannot outlive" in never.json()["error"]["details"]["problems"][0]["message"]
    later = (soon + datetime.timedelta(days=1)).isoformat()
    outlives = await client.post(
        "/api/v1/api-keys",
        json={"name": "later", "scopes": ["read"], "expires_at": later},
        headers=parent.headers,
    )
    assert problem_locations(outlives) == ["body.expires_at"]
    within = (soon - datetime.timedelta(minutes=1)).isoformat()
    ok = await client.post(
        "/api/v1/api-keys",
        json={"name": "within", "scopes": ["read"], "expires_at": within},
        headers=parent.headers,
    )
    assert ok.status_code == 201, ok.text
    rows = await DB.fetch("SELECT name FROM api_keys ORDER BY name")
    assert [row["name"] for row in rows] == ["test", "within"]


async def test_a_never_expiring_key_may_create_never_expiring_keys(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    made = await client.post(
        "/api/v1/api-keys", json={"name": "forever", "scopes": ["read"]}, headers=developer.headers
    )
    assert (made.status_code, made.json()["expires_at"]) == (201, None)


# -- 3. timestamps outside a sane range ---------------------------------------------------------


@pytest.mark.parametrize(
    "moment",
    [
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "1969-12-31T23:59:59Z",
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59-14:00",
    ],
)
async def test_timestamps_outside_a_sane_range_are_422_naming_the_field(
    client: httpx.AsyncClient, developer: Caller, moment: str
) -> None:
    workflow = await create_workflow(client, developer)
    run = await trigger(client, developer, workflow["id"])
    started = await client.post(f"/api/v1/runs/{run['id']}/start", headers=developer.headers)
    assert started.status_code == 200
    logged = await client.post(
        f"/api/v1/runs/{run['id']}/step-logs",
        json={"step_position": 0, "started_at": moment},
        headers=developer.headers,
    )
    assert problem_locations(logged) == ["body.started_at"]
    key = await client.post(
        "/api/v1/api-keys",
        json={"name": "k", "expires_at": moment},
        headers=developer.headers,
    )
    assert problem_locations(key) == ["body.expires_at"]
    assert await DB.fetch("SELECT 1 FROM run_step_logs") == []


async def test_a_recent_started_at_is_stored_with_its_time_zone(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    workflow = await create_workflow(client, developer)
    run = await trigger(client, developer, workflow["id"])
    await client.post(f"/api/v1/runs/{run['id']}/start", headers=developer.headers)
    moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=30)
    logged = await client.post(
        f"/api/v1/runs/{run['id']}/step-logs",
        json={"step_position": 0, "started_at": moment.isoformat()},
        headers=developer.headers,
    )
    assert logged.status_code == 201, logged.text
    assert datetime.datetime.fromisoformat(logged.json()["started_at"]) == moment


# -- 4. NUL and control characters in text fields -----------------------------------------------


@pytest.mark.parametrize("bad", ["\x00", "\x01", "\x1b[31m", "\x7f", "\u0085"])
async def test_control_characters_in_text_are_422_naming_the_field(
    client: httpx.AsyncClient, admin: Caller, bad: str
) -> None:
    user = await client.post(
        "/api/v1/users",
        json={"email": f"a{bad}b@example.com", "display_name": "A"},
        headers=admin.headers,
    )
    assert problem_locations(user) == ["body.email"]
    named = await client.post(
        "/api/v1/users",
        json={"email": "c@example.com", "display_name": f"C{bad}"},
        headers=admin.headers,
    )
    assert problem_locations(named) == ["body.display_name"]
    described = await client.post(
        "/api/v1/workflows",
        json={"name": "w", "description": f"line{bad}", "steps": []},
        headers=admin.headers,
    )
    assert problem_locations(described) == ["body.description"]
    users = await DB.fetch("SELECT email FROM users")
    assert [row["email"] for row in users] == ["ada@example.com"]


async def test_free_text_keeps_newlines_and_tabs(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    made = await client.post(
        "/api/v1/workflows",
        json={"name": "w", "description": "two\nlines\tand a tab\r\n", "steps": []},
        headers=developer.headers,
    )
    assert made.status_code == 201, made.text
    assert made.json()["description"] == "two\nlines\tand a tab\r\n"


# -- 5. no or malformed credentials: 401 without a database connection --------------------------


@contextlib.asynccontextmanager
async def exhausted_pool() -> AsyncIterator[None]:
    """Every connection of the app's pool held, so any request needing one would wait."""
    assert DB.pool is not None
    held = [await DB.pool.acquire() for _ in range(DB.pool.get_max_size())]
    try:
        yield
    finally:
        for connection in held:
            await DB.pool.release(connection)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"Authorization": "Bearer ff_0123456789abcdef_short"},
        {"Authorization": "Bearer ff_XYZ_" + "a" * 43},
    ],
)
async def test_missing_or_malformed_credentials_are_401_without_a_connection(
    client: httpx.AsyncClient, db: None, headers: dict[str, str]
) -> None:
    async with exhausted_pool(), asyncio.timeout(2):
        for method, path in [
            ("GET", "/api/v1/me"),
            ("POST", "/api/v1/workflows"),
            ("GET", "/api/v1/runs/00000000-0000-0000-0000-000000000000"),
        ]:
            response = await client.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (path, response.text)
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="flowforge"'
            assert response.json()["error"]["code"] == "unauthorized"


# -- 6. a chunked body over the limit -----------------------------------------------------------


async def test_a_chunked_body_over_the_limit_is_413(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    from flowforge.api.limits import MAX_BODY_BYTES

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "big", "description": "'
        for _ in range(MAX_BODY_BYTES // 65_536 + 1):
            yield b"x" * 65_536
        yield b'"}'

    response = await client.post(
        "/api/v1/workflows",
        content=chunks(),
        headers={**developer.headers, "Content-Type": "application/json"},
    )
    assert "content-length" not in {name.lower() for name in response.request.headers}
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"
    assert await DB.fetch("SELECT 1 FROM workflows") == []


async def test_a_chunked_body_within_the_limit_is_served(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "chunked",'
        yield b' "steps": []}'

    response = await client.post(
        "/api/v1/workflows",
        content=chunks(),
        headers={**developer.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text


# -- 10. 405 names every method of the path ---------------------------------------------------


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/api/v1/workflows/00000000-0000-0000-0000-000000000000", {"GET", "PATCH", "DELETE"}),
        ("/api/v1/workflows", {"GET", "POST"}),
        ("/api/v1/users/00000000-0000-0000-0000-000000000000", {"GET", "PATCH"}),
        ("/api/v1/runs/00000000-0000-0000-0000-000000000000/start", {"POST"}),
        # Not the run "claim" of /runs/{run_id} (its GET takes UUIDs only).
        ("/api/v1/runs/claim", {"POST"}),
    ],
)
async def test_method_not_allowed_names_every_method_of_the_path(
    client: httpx.AsyncClient, developer: Caller, path: str, allowed: set[str]
) -> None:
    for method in ["OPTIONS", "PUT"] + (["GET"] if path.endswith("/claim") else []):
        response = await client.request(method, path, headers=developer.headers)
        assert response.status_code == 405, (method, response.text)
        named = {m.strip() for m in response.headers["Allow"].split(",")}
        assert named == allowed, (method, path)
        body: dict[str, Any] = response.json()
        assert body["error"]["code"] == "method_not_allowed"
