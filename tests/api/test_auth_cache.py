"""Remembered keys (AUTH_CACHE_SECONDS): cheaper authentication, revocation still bounded.

A worker remembers a key it authenticated for ``AUTH_CACHE_SECONDS`` (default
1 s). A revocation or deactivation made through this worker takes effect at
once; one made elsewhere (another worker, SQL: simulated here with SQL, which
this worker's cache does not see) within the bound; an expiry exactly.
"""

from __future__ import annotations

import datetime
import time

import httpx

from flowforge.core.settings import get_settings
from flowforge.db.engine import DB
from flowforge.db.tables import Role, Scope
from flowforge.domain import api_keys
from tests.api.conftest import Caller, make_caller


async def status_of(client: httpx.AsyncClient, key: str) -> int:
    response = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"})
    return response.status_code


async def test_the_default_bound_is_one_second() -> None:
    assert get_settings().auth_cache_seconds == 1.0


async def test_a_revocation_through_the_api_takes_effect_at_once(
    client: httpx.AsyncClient, admin: Caller
) -> None:
    victim = await make_caller("victim@example.com", Role.DEVELOPER)
    assert await status_of(client, victim.key) == 200  # remembered from now on
    response = await client.post(f"/api/v1/api-keys/{victim.key_id}/revoke", headers=admin.headers)
    assert response.status_code == 200, response.text
    assert await status_of(client, victim.key) == 401


async def test_a_revocation_elsewhere_takes_effect_within_the_bound(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    """Revoked behind this worker's back (as another worker would): the key keeps
    working from the cache, and stops within AUTH_CACHE_SECONDS."""
    bound = get_settings().auth_cache_seconds
    assert await status_of(client, developer.key) == 200
    await DB.fetch("UPDATE api_keys SET revoked_at = now() WHERE id = $1", developer.key_id)
    revoked_at = time.monotonic()
    statuses = []
    while True:
        # The server checks its cache after the request is sent: a 200 to a
        # request sent more than the bound after the revocation would break it.
        sent = time.monotonic()
        if (status := await status_of(client, developer.key)) != 200:
            break
        statuses.append(status)
        assert sent - revoked_at <= bound + 0.05, "still accepted past the bound"
    assert status == 401
    assert statuses, "the remembered key served requests until its entry lapsed"


async def test_a_deactivation_through_the_api_takes_effect_at_once(
    client: httpx.AsyncClient, admin: Caller
) -> None:
    user = await make_caller("leaver@example.com", Role.DEVELOPER)
    assert await status_of(client, user.key) == 200
    response = await client.post(f"/api/v1/users/{user.user_id}/deactivate", headers=admin.headers)
    assert response.status_code == 200, response.text
    assert await status_of(client, user.key) == 401


async def test_an_expiry_is_exact_for_a_remembered_key(client: httpx.AsyncClient) -> None:
    """A remembered key is accepted only before its expires_at, never after."""
    user = await make_caller("brief@example.com", Role.DEVELOPER)
    expires_at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=0.6)
    async with DB.transaction():
        _, key = await api_keys.create_api_key(
            user.user_id, name="brief", scopes=[Scope.READ], expires_at=expires_at
        )
    while True:
        sent = datetime.datetime.now(datetime.UTC)
        status = await status_of(client, key)
        if status != 200:
            break
        assert sent < expires_at, "accepted after its expiry"
    assert status == 401
    assert datetime.datetime.now(datetime.UTC) >= expires_at


async def test_a_remembered_key_sets_the_actor_in_begin(developer: Caller) -> None:
    """The request path's hook for the run history: the actor of a remembered
    key is set by the transaction's BEGIN, as the lookup statement would."""
    from flowforge.api.deps import request_transaction

    presented = api_keys.parse_key(developer.key)
    async with request_transaction(presented):  # looked up, then remembered
        pass
    assert api_keys.PRINCIPALS.get(presented) is not None
    async with request_transaction(presented) as principal:
        rows = await DB.fetch("SELECT current_setting('flowforge.actor', true) AS actor")
    assert principal.actor == f"api_key:{developer.key_id}"
    assert rows[0]["actor"] == principal.actor
    rows = await DB.fetch("SELECT current_setting('flowforge.actor', true) AS actor")
    assert rows[0]["actor"] in (None, ""), "transaction-local: gone after COMMIT"


async def test_no_cache_when_the_bound_is_zero(
    client: httpx.AsyncClient, developer: Caller, monkeypatch: object
) -> None:
    import os

    os.environ["AUTH_CACHE_SECONDS"] = "0"
    get_settings.cache_clear()
    try:
        api_keys.PRINCIPALS.clear()
        assert await status_of(client, developer.key) == 200
        assert api_keys.PRINCIPALS.get(api_keys.parse_key(developer.key)) is None
        await DB.fetch("UPDATE api_keys SET revoked_at = now() WHERE id = $1", developer.key_id)
        assert await status_of(client, developer.key) == 401
    finally:
        del os.environ["AUTH_CACHE_SECONDS"]
        get_settings.cache_clear()
