"""Bearer API keys: who gets in (401), and what they may do (403 / 404)."""

from __future__ import annotations

import datetime

import httpx
import pytest

from flowforge.db.engine import DB
from flowforge.db.tables import Role, Scope
from flowforge.domain.api_keys import hash_key
from tests.api.conftest import Caller, create_workflow, forget_remembered_keys, make_caller, trigger


async def test_no_key_is_401_with_www_authenticate(client: httpx.AsyncClient, db: None) -> None:
    response = await client.get("/api/v1/workflows")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    "header",
    [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer nonsense",
        "Bearer ff_0123456789abcdef_" + "A" * 43,  # well-formed, unknown prefix
        "Bearer ff_0123456789abcdef_" + "A" * 44,
    ],
)
async def test_bad_keys_are_401(client: httpx.AsyncClient, developer: Caller, header: str) -> None:
    response = await client.get("/api/v1/workflows", headers={"Authorization": header})
    assert response.status_code == 401
    assert "www-authenticate" in response.headers


async def test_right_prefix_wrong_secret_is_401(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    prefix = developer.key.split("_")[1]
    forged = f"ff_{prefix}_" + "B" * 43
    response = await client.get("/api/v1/workflows", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "The API key is not valid."


async def test_only_the_hash_and_prefix_are_stored(developer: Caller) -> None:
    row = (await DB.fetch("SELECT prefix, key_hash FROM api_keys WHERE id = $1", developer.key_id))[
        0
    ]
    assert developer.key == f"ff_{row['prefix']}_{developer.key.split('_', 2)[2]}"
    assert row["key_hash"] == hash_key(developer.key)
    dump = str(await DB.fetch("SELECT * FROM api_keys"))
    assert developer.key.split("_", 2)[2] not in dump


async def test_revoked_expired_and_deactivated_keys_are_401(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    assert (await client.get("/api/v1/workflows", headers=developer.headers)).status_code == 200
    await DB.fetch("UPDATE api_keys SET expires_at = now() - interval '1 second'")
    forget_remembered_keys()
    expired = await client.get("/api/v1/workflows", headers=developer.headers)
    assert (expired.status_code, expired.json()["error"]["message"]) == (
        401,
        "The API key has expired.",
    )
    await DB.fetch("UPDATE api_keys SET expires_at = NULL, revoked_at = now()")
    forget_remembered_keys()
    revoked = await client.get("/api/v1/workflows", headers=developer.headers)
    assert (revoked.status_code, revoked.json()["error"]["message"]) == (
        401,
        "The API key has been revoked.",
    )
    await DB.fetch("UPDATE api_keys SET revoked_at = NULL")
    await DB.fetch("UPDATE users SET is_active = false")
    forget_remembered_keys()
    inactive = await client.get("/api/v1/workflows", headers=developer.headers)
    assert inactive.status_code == 401
    assert "deactivated" in inactive.json()["error"]["message"]


async def last_used(caller: Caller) -> datetime.datetime | None:
    rows = await DB.fetch("SELECT last_used_at FROM api_keys WHERE id = $1", caller.key_id)
    value: datetime.datetime | None = rows[0]["last_used_at"]
    return value


async def test_last_used_at_is_written_at_most_once_a_minute(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    assert await last_used(developer) is None
    await client.get("/api/v1/workflows", headers=developer.headers)
    first = await last_used(developer)
    assert first is not None
    await client.get("/api/v1/workflows", headers=developer.headers)
    assert await last_used(developer) == first  # within the minute: no write
    await DB.fetch("UPDATE api_keys SET last_used_at = now() - interval '2 minutes'")
    forget_remembered_keys()
    stale = await last_used(developer)
    await client.get("/api/v1/workflows", headers=developer.headers)
    refreshed = await last_used(developer)
    assert stale is not None and refreshed is not None and refreshed > stale


async def test_last_used_write_never_waits_for_a_lock(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    """A request authenticates while another session holds the key's row lock."""
    import asyncio

    import asyncpg

    await DB.fetch("UPDATE api_keys SET last_used_at = now() - interval '2 minutes'")
    forget_remembered_keys()
    stale = await last_used(developer)
    other = await asyncpg.connect(DB.config["dsn"])
    try:
        async with other.transaction():
            await other.execute("SELECT 1 FROM api_keys WHERE id = $1 FOR UPDATE", developer.key_id)
            response = await asyncio.wait_for(
                client.get("/api/v1/workflows", headers=developer.headers), timeout=5
            )
    finally:
        await other.close()
    assert response.status_code == 200
    assert await last_used(developer) == stale  # skipped, not waited for


async def test_scopes_are_enforced_with_403(client: httpx.AsyncClient, db: None) -> None:
    reader = await make_caller("reader@example.com", Role.DEVELOPER, (Scope.READ,))
    writer = await make_caller("writer@example.com", Role.DEVELOPER, (Scope.WRITE,))
    assert (await client.get("/api/v1/workflows", headers=reader.headers)).status_code == 200
    denied = await client.post("/api/v1/workflows", json={"name": "x"}, headers=reader.headers)
    assert denied.status_code == 403
    assert denied.json()["error"]["details"]["required_scope"] == "write"
    made = await client.post("/api/v1/workflows", json={"name": "x"}, headers=writer.headers)
    assert made.status_code == 201
    # write does not imply read
    assert (await client.get("/api/v1/workflows", headers=writer.headers)).status_code == 403


async def test_viewers_are_read_only(
    client: httpx.AsyncClient, viewer: Caller, admin: Caller
) -> None:
    workflow = await create_workflow(client, admin, owner_id=str(viewer.user_id))
    run = await trigger(client, admin, workflow["id"])
    listed = await client.get("/api/v1/workflows", headers=viewer.headers)
    assert [w["id"] for w in listed.json()["items"]] == [workflow["id"]]
    assert (
        await client.get(f"/api/v1/runs/{run['id']}", headers=viewer.headers)
    ).status_code == 200
    for method, path in [
        ("POST", "/api/v1/workflows"),
        ("POST", f"/api/v1/workflows/{workflow['id']}/runs"),
        ("POST", f"/api/v1/runs/{run['id']}/cancel"),
        ("DELETE", f"/api/v1/workflows/{workflow['id']}"),
        ("POST", "/api/v1/api-keys"),
    ]:
        body = {"name": "x"} if path.endswith(("workflows", "api-keys")) else {}
        response = await client.request(method, path, json=body, headers=viewer.headers)
        assert response.status_code == 403, (method, path, response.text)


async def test_a_key_with_scopes_beyond_its_role_gets_only_the_role(
    client: httpx.AsyncClient, db: None
) -> None:
    """Scopes stored before a demotion do not outlive it: the role caps them."""
    demoted = await make_caller("demoted@example.com", Role.DEVELOPER)
    await DB.fetch("UPDATE users SET role = 'viewer'")
    forget_remembered_keys()
    response = await client.post("/api/v1/workflows", json={"name": "x"}, headers=demoted.headers)
    assert response.status_code == 403
    assert response.json()["error"]["details"]["role"] == "viewer"


async def test_developers_cannot_manage_users(
    client: httpx.AsyncClient, developer: Caller, admin: Caller
) -> None:
    assert (await client.get("/api/v1/users", headers=developer.headers)).status_code == 403
    no_admin_scope = await make_caller("ada2@example.com", Role.ADMIN, (Scope.READ, Scope.WRITE))
    assert (await client.get("/api/v1/users", headers=no_admin_scope.headers)).status_code == 403
    assert (await client.get("/api/v1/users", headers=admin.headers)).status_code == 200


async def test_me(client: httpx.AsyncClient, developer: Caller) -> None:
    response = await client.get("/api/v1/me", headers=developer.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["user"]["email"] == developer.email
    assert body["api_key_id"] == str(developer.key_id)
    assert body["scopes"] == ["read", "worker", "write"]
