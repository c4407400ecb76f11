"""Revoking a key revokes every key it granted, transitively, with an event for each.

A key made through ``POST /api-keys`` records the key that made it
(``granted_by_key_id``). A leaked key's grants are leaked too: revoking it must
end them all in the same transaction, whoever they belong to, while keys it did
not grant keep working and keys already revoked keep their ``revoked_at``.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import httpx

from flowforge.db.engine import DB
from flowforge.db.tables import Role, Scope
from flowforge.domain import api_keys
from flowforge.domain.principal import Principal
from tests.api.conftest import Caller, events, forget_remembered_keys, make_caller


async def grant(client: httpx.AsyncClient, granter: Caller, name: str, **body: Any) -> Caller:
    """A key made with `granter`'s key (read and write unless told), as a client holds it."""
    response = await client.post(
        "/api/v1/api-keys",
        json={"name": name, "scopes": ["read", "write"], **body},
        headers=granter.headers,
    )
    assert response.status_code == 201, response.text
    key = response.json()
    return Caller(UUID(key["user_id"]), granter.email, key["key"], UUID(key["id"]))


async def revoke(client: httpx.AsyncClient, caller: Caller, key_id: UUID) -> httpx.Response:
    return await client.post(f"/api/v1/api-keys/{key_id}/revoke", headers=caller.headers)


async def authenticates(client: httpx.AsyncClient, caller: Caller) -> bool:
    response = await client.get("/api/v1/me", headers=caller.headers)
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


async def revoked_events() -> dict[str, dict[str, Any]]:
    """api_key.revoked payloads by key id (each key at most once)."""
    found: dict[str, dict[str, Any]] = {}
    for event in await events():
        if event["event_type"] == "api_key.revoked":
            key_id = str(event["aggregate_id"])
            assert key_id not in found, f"two revocation events for {key_id}"
            assert event["payload"]["api_key_id"] == key_id
            found[key_id] = event["payload"]
    return found


async def revoked_at(key_id: UUID) -> Any:
    rows = await DB.fetch("SELECT revoked_at FROM api_keys WHERE id = $1", key_id)
    return rows[0]["revoked_at"]


async def test_a_grandchild_key_stops_authenticating_when_its_grandparent_is_revoked(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    parent = await grant(client, developer, "parent")
    child = await grant(client, parent, "child")
    grandchild = await grant(client, child, "grandchild")
    sibling = await grant(client, developer, "sibling")  # granted by the CLI-made key
    nephew = await grant(client, sibling, "nephew")

    response = await revoke(client, developer, parent.key_id)
    assert response.status_code == 200, response.text
    assert response.json()["revoked_at"] is not None

    for key in (parent, child, grandchild):
        assert not await authenticates(client, key)
    for key in (developer, sibling, nephew):
        assert await authenticates(client, key)
    assert response.json()["granted_by_key_id"] == str(developer.key_id)
    # One transaction: one revoked_at for the whole tree.
    assert len({await revoked_at(key.key_id) for key in (parent, child, grandchild)}) == 1

    revoked = await revoked_events()
    assert set(revoked) == {str(key.key_id) for key in (parent, child, grandchild)}
    assert revoked[str(parent.key_id)]["cascaded_from"] is None
    for key in (child, grandchild):
        assert revoked[str(key.key_id)]["cascaded_from"] == str(parent.key_id)
        assert revoked[str(key.key_id)]["user_id"] == str(developer.user_id)

    listed = await client.get("/api/v1/api-keys", headers=developer.headers)
    by_id = {item["id"]: item for item in listed.json()["items"]}
    assert by_id[str(grandchild.key_id)]["granted_by_key_id"] == str(child.key_id)
    assert by_id[str(grandchild.key_id)]["revoked_at"] is not None
    assert by_id[str(nephew.key_id)]["revoked_at"] is None


async def test_keys_already_revoked_keep_their_revoked_at_and_what_they_granted_is_walked(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    parent = await grant(client, developer, "parent")
    child = await grant(client, parent, "child")
    grandchild = await grant(client, child, "grandchild")
    assert (await revoke(client, developer, child.key_id)).status_code == 200
    first = {key.key_id: await revoked_at(key.key_id) for key in (child, grandchild)}
    assert None not in first.values()

    assert (await revoke(client, developer, parent.key_id)).status_code == 200
    assert {key.key_id: await revoked_at(key.key_id) for key in (child, grandchild)} == first
    revoked = await revoked_events()
    assert set(revoked) == {str(key.key_id) for key in (parent, child, grandchild)}
    assert revoked[str(child.key_id)]["cascaded_from"] is None  # named in its own revocation
    assert revoked[str(grandchild.key_id)]["cascaded_from"] == str(child.key_id)

    # Revoking twice changes nothing and writes nothing.
    again = await revoke(client, developer, parent.key_id)
    assert again.status_code == 200
    assert len(await revoked_events()) == 3


async def test_a_key_cannot_revoke_a_key_that_granted_it(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    parent = await grant(client, developer, "parent")
    child = await grant(client, parent, "child")
    grandchild = await grant(client, child, "grandchild")

    for caller in (child, grandchild):
        response = await revoke(client, caller, parent.key_id)
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "conflict"
    for key in (developer, parent, child, grandchild):
        assert await authenticates(client, key)
    assert await revoked_events() == {}

    # Downwards is fine: the grandchild is revoked, the caller keeps working.
    assert (await revoke(client, parent, grandchild.key_id)).status_code == 200
    assert await authenticates(client, parent)
    assert not await authenticates(client, grandchild)


async def test_revoking_a_key_revokes_the_keys_it_granted_to_other_users(
    client: httpx.AsyncClient, admin: Caller, developer: Caller
) -> None:
    """An admin's key may grant keys to anyone: they end with it (they exist only by
    its authority), even for a revoker who could not revoke them one by one."""
    delegated = await grant(client, admin, "delegated", scopes=["read", "write", "admin"])
    for_developer = await grant(client, delegated, "for dev", user_id=str(developer.user_id))
    assert for_developer.user_id == developer.user_id
    developers_own = await grant(client, for_developer, "dev's own")

    # The developer may revoke the key granted to them, not the admin's key that granted it.
    response = await revoke(client, developer, delegated.key_id)
    assert response.status_code == 404, response.text

    response = await revoke(client, admin, delegated.key_id)
    assert response.status_code == 200, response.text
    for key in (delegated, for_developer, developers_own):
        assert not await authenticates(client, key)
    assert await authenticates(client, admin) and await authenticates(client, developer)
    revoked = await revoked_events()
    assert revoked[str(for_developer.key_id)]["user_id"] == str(developer.user_id)
    assert revoked[str(developers_own.key_id)]["cascaded_from"] == str(delegated.key_id)


async def test_a_developer_revoking_their_key_revokes_what_it_granted_to_others(
    client: httpx.AsyncClient, admin: Caller
) -> None:
    """A user demoted from admin keeps their keys (now limited to their role); revoking
    one, with the write scope over their own keys, still ends the keys it granted to
    other users while it was an admin's: the tree goes, whoever holds its branches."""
    other = await make_caller("other@example.com", Role.DEVELOPER)
    delegated = await grant(client, admin, "delegated", scopes=["read", "write", "admin"])
    for_other = await grant(client, delegated, "for other", user_id=str(other.user_id))
    # (The API does not let an admin demote themselves; another admin could.)
    await DB.fetch("UPDATE users SET role = 'developer' WHERE id = $1", admin.user_id)
    forget_remembered_keys()

    response = await revoke(client, admin, delegated.key_id)  # own key, write scope
    assert response.status_code == 200, response.text
    assert not await authenticates(client, for_other)
    assert await authenticates(client, other)


# -- concurrency: a key granted while its granter is being revoked ----------------------


async def wait_until_waiting_on_a_lock(fragment: str) -> None:
    """Until a backend whose statement contains `fragment` waits on a lock
    (polling pg_stat_activity: the condition, not a guess of time)."""
    for _ in range(1500):
        rows = await DB.fetch(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND position($1 in query) > 0",
            fragment,
        )
        if rows:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no backend waits on a lock in {fragment!r}")


async def api_keys_of(user_id: UUID) -> list[dict[str, Any]]:
    async with DB.transaction():
        items, _ = await api_keys.list_api_keys(user_id=user_id, limit=200)
    return items


def principal_of(caller: Caller) -> Principal:
    return Principal(
        user_id=caller.user_id,
        role=Role.DEVELOPER,
        scopes=frozenset({Scope.READ, Scope.WRITE}),
        key_id=caller.key_id,
    )


async def test_a_key_granted_during_the_revocation_of_its_grandparent_is_revoked(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    """The grant commits while the revocation waits for it: the revocation's next
    pass (a new snapshot) finds the new key."""
    parent = await grant(client, developer, "parent")
    child = await grant(client, parent, "child")
    granted = asyncio.Event()
    release = asyncio.Event()

    async def grant_and_hold() -> tuple[dict[str, Any], str]:
        async with DB.transaction():
            made = await api_keys.create_api_key(
                developer.user_id,
                name="late",
                scopes=[Scope.READ],
                granted_by=principal_of(child),
            )
            granted.set()
            await release.wait()
        return made

    granting = asyncio.create_task(grant_and_hold())
    await granted.wait()
    revoking = asyncio.create_task(revoke(client, developer, parent.key_id))
    try:
        await wait_until_waiting_on_a_lock("WITH RECURSIVE tree")
    finally:
        release.set()
    late, late_key = await granting
    response = await revoking
    assert response.status_code == 200, response.text

    late_caller = Caller(developer.user_id, developer.email, late_key, late["id"])
    assert not await authenticates(client, late_caller)
    assert str(late["id"]) in await revoked_events()


async def test_a_key_cannot_be_granted_by_a_key_being_revoked(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    """The grant waits for the revocation, then finds its granter revoked: 401."""
    parent = await grant(client, developer, "parent")
    child = await grant(client, parent, "child")
    revoked = asyncio.Event()
    release = asyncio.Event()

    async def revoke_and_hold() -> None:
        async with DB.transaction():
            await api_keys.revoke_api_key(parent.key_id)
            revoked.set()
            await release.wait()

    revoking = asyncio.create_task(revoke_and_hold())
    await revoked.wait()
    granting = asyncio.create_task(
        client.post("/api/v1/api-keys", json={"name": "late"}, headers=child.headers)
    )
    try:
        await wait_until_waiting_on_a_lock("FOR SHARE")
    finally:
        release.set()
    await revoking
    response = await granting
    assert response.status_code == 401, response.text
    assert "revoked" in response.json()["error"]["message"]
    names = {item["name"] for item in (await api_keys_of(developer.user_id))}
    assert "late" not in names
