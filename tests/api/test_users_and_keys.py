"""Users (admin only) and API keys over HTTP."""

from __future__ import annotations

import datetime

import httpx

from tests.api.conftest import Caller, count, events


async def test_admin_creates_lists_and_gets_users(client: httpx.AsyncClient, admin: Caller) -> None:
    response = await client.post(
        "/api/v1/users",
        json={"email": "new@example.com", "display_name": "New Person", "role": "viewer"},
        headers=admin.headers,
    )
    assert response.status_code == 201
    user = response.json()
    assert (user["role"], user["is_active"]) == ("viewer", True)
    assert (await events(user["id"]))[0]["event_type"] == "user.created"
    duplicate = await client.post(
        "/api/v1/users",
        json={"email": "NEW@example.com", "display_name": "Again"},
        headers=admin.headers,
    )
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["message"] == "A user with this email address already exists."
    got = await client.get(f"/api/v1/users/{user['id']}", headers=admin.headers)
    assert got.json() == user
    first = await client.get("/api/v1/users", params={"limit": 1}, headers=admin.headers)
    assert [u["id"] for u in first.json()["items"]] == [user["id"]]
    rest = await client.get(
        "/api/v1/users",
        params={"limit": 5, "cursor": first.json()["next_cursor"]},
        headers=admin.headers,
    )
    assert [u["email"] for u in rest.json()["items"]] == [admin.email]
    missing = await client.get(
        "/api/v1/users/00000000-0000-0000-0000-000000000000", headers=admin.headers
    )
    assert missing.status_code == 404


async def test_bad_user_bodies_are_422(client: httpx.AsyncClient, admin: Caller) -> None:
    before = await count("users")
    for body in (
        {"email": "no-at-sign", "display_name": "x"},
        {"email": "a@b", "display_name": ""},
        {"email": "a@b", "display_name": "x", "role": "root"},
        {"email": "a@b", "display_name": "x", "is_active": False},
        {"email": "a@b" + "c" * 400, "display_name": "x"},
    ):
        response = await client.post("/api/v1/users", json=body, headers=admin.headers)
        assert response.status_code == 422, body
    assert await count("users") == before


async def test_update_deactivate_and_activate_users(
    client: httpx.AsyncClient, admin: Caller, developer: Caller
) -> None:
    path = f"/api/v1/users/{developer.user_id}"
    renamed = await client.patch(
        path, json={"display_name": "Renamed", "role": "viewer"}, headers=admin.headers
    )
    assert (renamed.json()["display_name"], renamed.json()["role"]) == ("Renamed", "viewer")
    off = await client.post(f"{path}/deactivate", headers=admin.headers)
    assert off.json()["is_active"] is False
    # Their key stops working at once.
    assert (await client.get("/api/v1/me", headers=developer.headers)).status_code == 401
    on = await client.post(f"{path}/activate", headers=admin.headers)
    assert on.json()["is_active"] is True
    assert (await client.get("/api/v1/me", headers=developer.headers)).status_code == 200
    kinds = [e["event_type"] for e in await events(developer.user_id)]
    assert kinds == ["user.created", "user.updated", "user.deactivated", "user.activated"]


async def test_admins_cannot_lock_themselves_out(client: httpx.AsyncClient, admin: Caller) -> None:
    path = f"/api/v1/users/{admin.user_id}"
    assert (await client.post(f"{path}/deactivate", headers=admin.headers)).status_code == 409
    demote = await client.patch(path, json={"role": "developer"}, headers=admin.headers)
    assert demote.status_code == 409
    assert (
        await client.patch(path, json={"display_name": "Ada"}, headers=admin.headers)
    ).status_code == 200


async def test_create_key_shows_the_secret_once(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    response = await client.post(
        "/api/v1/api-keys", json={"name": "ci", "scopes": ["read"]}, headers=developer.headers
    )
    assert response.status_code == 201
    created = response.json()
    assert created["key"].startswith(f"ff_{created['prefix']}_")
    assert created["scopes"] == ["read"]
    new_headers = {"Authorization": f"Bearer {created['key']}"}
    assert (await client.get("/api/v1/me", headers=new_headers)).status_code == 200
    listed = await client.get("/api/v1/api-keys", headers=developer.headers)
    assert listed.status_code == 200
    assert {k["id"] for k in listed.json()["items"]} == {created["id"], str(developer.key_id)}
    text = listed.text
    assert "key_hash" not in text
    assert created["key"] not in text
    assert created["key"].split("_", 2)[2] not in text
    mine = next(k for k in listed.json()["items"] if k["id"] == str(developer.key_id))
    assert mine["last_used_at"] is not None
    [event] = [e for e in await events(created["id"]) if e["event_type"] == "api_key.created"]
    assert created["key"].split("_", 2)[2] not in str(event)


async def test_key_scopes_cannot_exceed_the_role_or_the_granting_key(
    client: httpx.AsyncClient, developer: Caller, admin: Caller, viewer: Caller
) -> None:
    beyond_role = await client.post(
        "/api/v1/api-keys", json={"name": "x", "scopes": ["admin"]}, headers=developer.headers
    )
    assert beyond_role.status_code == 403
    read_only = await client.post(
        "/api/v1/api-keys", json={"name": "ro", "scopes": ["read"]}, headers=developer.headers
    )
    ro_headers = {"Authorization": f"Bearer {read_only.json()['key']}"}
    cannot_write = await client.post(
        "/api/v1/api-keys", json={"name": "x", "scopes": ["read"]}, headers=ro_headers
    )
    assert cannot_write.status_code == 403
    rw = await client.post(
        "/api/v1/api-keys",
        json={"name": "rw", "scopes": ["read", "write"]},
        headers=admin.headers,
    )
    rw_headers = {"Authorization": f"Bearer {rw.json()['key']}"}
    escalate = await client.post(
        "/api/v1/api-keys",
        json={"name": "x", "scopes": ["read", "write", "admin"]},
        headers=rw_headers,
    )
    assert escalate.status_code == 403
    viewer_write = await client.post(
        "/api/v1/api-keys",
        json={"name": "x", "scopes": ["write"], "user_id": str(viewer.user_id)},
        headers=admin.headers,
    )
    assert viewer_write.status_code == 403
    for_viewer = await client.post(
        "/api/v1/api-keys",
        json={"name": "v", "scopes": ["read"], "user_id": str(viewer.user_id)},
        headers=admin.headers,
    )
    assert (for_viewer.status_code, for_viewer.json()["user_id"]) == (201, str(viewer.user_id))
    not_for_others = await client.post(
        "/api/v1/api-keys",
        json={"name": "x", "user_id": str(admin.user_id)},
        headers=developer.headers,
    )
    assert not_for_others.status_code == 403


async def test_bad_key_bodies_are_422(client: httpx.AsyncClient, developer: Caller) -> None:
    past = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)).isoformat()
    for body in (
        {"name": ""},
        {"name": "x", "scopes": []},
        {"name": "x", "scopes": ["root"]},
        {"name": "x", "expires_at": past},
        {"name": "x", "expires_at": "2030-01-01T00:00:00"},  # no time zone
        {"name": "x", "key": "ff_mine"},
    ):
        response = await client.post("/api/v1/api-keys", json=body, headers=developer.headers)
        assert response.status_code == 422, body


async def test_expiring_key(client: httpx.AsyncClient, developer: Caller) -> None:
    soon = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)).isoformat()
    response = await client.post(
        "/api/v1/api-keys",
        json={"name": "temp", "scopes": ["read"], "expires_at": soon},
        headers=developer.headers,
    )
    assert response.status_code == 201
    assert response.json()["expires_at"] is not None


async def test_revoke(
    client: httpx.AsyncClient, developer: Caller, other_developer: Caller, admin: Caller
) -> None:
    created = (
        await client.post(
            "/api/v1/api-keys", json={"name": "temp", "scopes": ["read"]}, headers=developer.headers
        )
    ).json()
    headers = {"Authorization": f"Bearer {created['key']}"}
    path = f"/api/v1/api-keys/{created['id']}/revoke"
    assert (await client.post(path, headers=other_developer.headers)).status_code == 404
    revoked = await client.post(path, headers=developer.headers)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert (await client.get("/api/v1/me", headers=headers)).status_code == 401
    again = await client.post(path, headers=developer.headers)
    assert (again.status_code, again.json()["revoked_at"]) == (200, revoked.json()["revoked_at"])
    kinds = [e["event_type"] for e in await events(created["id"])]
    assert kinds == ["api_key.created", "api_key.revoked"]
    # Admins revoke anyone's key, and list anyone's.
    assert (
        await client.post(
            f"/api/v1/api-keys/{other_developer.key_id}/revoke", headers=admin.headers
        )
    ).status_code == 200
    theirs = await client.get(
        "/api/v1/api-keys", params={"user_id": str(other_developer.user_id)}, headers=admin.headers
    )
    assert [k["revoked_at"] is not None for k in theirs.json()["items"]] == [True]
    snoop = await client.get(
        "/api/v1/api-keys", params={"user_id": str(admin.user_id)}, headers=developer.headers
    )
    assert snoop.status_code == 403
    missing = await client.post(
        "/api/v1/api-keys/00000000-0000-0000-0000-000000000000/revoke", headers=admin.headers
    )
    assert missing.status_code == 404


async def test_key_for_a_missing_or_inactive_user(
    client: httpx.AsyncClient, admin: Caller, developer: Caller
) -> None:
    missing = await client.post(
        "/api/v1/api-keys",
        json={"name": "x", "user_id": "00000000-0000-0000-0000-000000000000"},
        headers=admin.headers,
    )
    assert missing.status_code == 404
    await client.post(f"/api/v1/users/{developer.user_id}/deactivate", headers=admin.headers)
    inactive = await client.post(
        "/api/v1/api-keys",
        json={"name": "x", "user_id": str(developer.user_id)},
        headers=admin.headers,
    )
    assert inactive.status_code == 409
