"""The real app (lifespan included) on the test database, and callers with real keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import pytest
from piccolo.apps.user.tables import BaseUser

from flowforge.api.app import create_app
from flowforge.db.engine import DB
from flowforge.db.tables import Role, Scope
from flowforge.domain import api_keys, users


@dataclass
class Caller:
    """A user with one API key, as a client would hold it."""

    user_id: UUID
    email: str
    key: str
    key_id: UUID

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


async def make_caller(
    email: str, role: Role, scopes: tuple[Scope, ...] | None = None, **key_options: Any
) -> Caller:
    async with DB.transaction():
        user = await users.create_user(email, email.split("@")[0].title(), role)
        key, full_key = await api_keys.create_api_key(
            user["id"],
            name="test",
            scopes=scopes if scopes is not None else sorted(_all_scopes(role)),
            **key_options,
        )
    return Caller(user["id"], email, full_key, key["id"])


def _all_scopes(role: Role) -> set[Scope]:
    from flowforge.domain.principal import SCOPES_BY_ROLE

    return set(SCOPES_BY_ROLE[role])


@pytest.fixture
async def client(db: None) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as c,
    ):
        yield c


@pytest.fixture
async def admin(db: None) -> Caller:
    return await make_caller("ada@example.com", Role.ADMIN)


@pytest.fixture
async def developer(db: None) -> Caller:
    return await make_caller("dev@example.com", Role.DEVELOPER)


@pytest.fixture
async def other_developer(db: None) -> Caller:
    return await make_caller("other@example.com", Role.DEVELOPER)


@pytest.fixture
async def viewer(db: None) -> Caller:
    return await make_caller("vic@example.com", Role.VIEWER)


ADMIN_LOGIN = ("secrets-admin", "secrets-test-password-1")


@pytest.fixture
async def admin_session(client: httpx.AsyncClient, developer: Caller) -> httpx.AsyncClient:
    """`client` logged in to Piccolo Admin (a session cookie), with one API key in the table."""
    username, password = ADMIN_LOGIN
    await DB.fetch("DELETE FROM piccolo_user WHERE username = $1", username)
    await BaseUser.create_user(
        username=username,
        password=password,
        # Its own email: piccolo_user.email is unique, and other logins (the
        # browser test's) leave it empty.
        email=f"{username}@example.com",
        active=True,
        admin=True,
        superuser=True,
    )
    await client.get("/admin/")
    token = client.cookies.get("csrftoken")
    assert token, "the admin sets a CSRF cookie"
    login = await client.post(
        "/admin/public/login/",
        json={"username": username, "password": password},
        headers={"X-CSRFToken": token},
    )
    assert login.status_code in (200, 303), login.text
    listed = await client.get("/admin/api/tables/api_keys/?__order=-created_at")
    assert listed.status_code == 200, listed.text
    assert len(listed.json()["rows"]) == 1
    return client


WORKFLOW_BODY: dict[str, Any] = {
    "name": "Nightly report",
    "description": "Sends the numbers",
    "trigger_type": "schedule",
    "trigger_config": {"cron": "0 2 * * *"},
    "steps": [
        {"name": "Query", "action_type": "sql.query", "config": {"sql": "select 1"}},
        {"name": "Render", "action_type": "template.render"},
        {"name": "Email", "action_type": "email.send", "retry_policy": {"max_attempts": 3}},
    ],
}


async def create_workflow(
    client: httpx.AsyncClient, caller: Caller, **overrides: Any
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/workflows", json={**WORKFLOW_BODY, **overrides}, headers=caller.headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def if_match(caller: Caller, workflow: dict[str, Any]) -> dict[str, str]:
    """The caller's headers with If-Match: the workflow's ETag (its revision)."""
    return {**caller.headers, "If-Match": f'"{workflow["revision"]}"'}


async def trigger(
    client: httpx.AsyncClient, caller: Caller, workflow_id: Any, **body: Any
) -> dict[str, Any]:
    response = await client.post(
        f"/api/v1/workflows/{workflow_id}/runs", json=body, headers=caller.headers
    )
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()
    return run


async def events(aggregate_id: Any = None) -> list[dict[str, Any]]:
    """Outbox rows (oldest first), payload decoded."""
    import json

    rows = await DB.fetch(
        "SELECT aggregate_type, aggregate_id, event_type, payload FROM outbox "
        "WHERE $1::uuid IS NULL OR aggregate_id = $1 ORDER BY created_at, id",
        aggregate_id if aggregate_id is None else UUID(str(aggregate_id)),
    )
    return [{**dict(row), "payload": json.loads(row["payload"])} for row in rows]


async def count(table: str) -> int:
    return int((await DB.fetch(f"SELECT count(*) AS n FROM {table}"))[0]["n"])


def forget_remembered_keys() -> None:
    """After a change made behind the app's back (SQL, as another worker would):
    what this worker's key cache does by itself within AUTH_CACHE_SECONDS."""
    api_keys.PRINCIPALS.clear()
