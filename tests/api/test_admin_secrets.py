"""Piccolo Admin never lets a logged-in user sort, filter or select on a secret column.

Through the real admin API (the one its UI calls), with a real session login:
ordering API keys by `key_hash` would leak the hashes' order, and filtering on
it (`key_hash__match=starts`) would let anyone with an admin login read a hash
character by character.
"""

from __future__ import annotations

import httpx
import pytest

from flowforge.db.engine import DB
from tests.api.conftest import Caller

USERNAME = "secrets-admin"
PASSWORD = "secrets-test-password-1"


@pytest.fixture
async def admin_session(client: httpx.AsyncClient, developer: Caller) -> httpx.AsyncClient:
    from piccolo.apps.user.tables import BaseUser

    await DB.fetch("DELETE FROM piccolo_user WHERE username = $1", USERNAME)
    await BaseUser.create_user(
        username=USERNAME, password=PASSWORD, active=True, admin=True, superuser=True
    )
    await client.get("/admin/")
    token = client.cookies.get("csrftoken")
    assert token, "the admin sets a CSRF cookie"
    login = await client.post(
        "/admin/public/login/",
        json={"username": USERNAME, "password": PASSWORD},
        headers={"X-CSRFToken": token},
    )
    assert login.status_code in (200, 303), login.text
    listed = await client.get("/admin/api/tables/api_keys/?__order=-created_at")
    assert listed.status_code == 200, listed.text
    assert len(listed.json()["rows"]) == 1
    return client


@pytest.mark.parametrize(
    "query",
    [
        "__order=key_hash",
        "__order=-key_hash",
        "__order=prefix,key_hash",
        "__order=prefix&__order=key_hash",
        "key_hash=00",
        "key_hash=0&key_hash__match=starts",
        "key_hash__operator=is_not_null",
        "__visible_fields=id,key_hash",
        "__visible_fields=user_id.id,key_hash",
        "__order=%6Bey_hash",
    ],
)
async def test_admin_refuses_secret_columns_in_queries(
    admin_session: httpx.AsyncClient, query: str
) -> None:
    for path in ["/admin/api/tables/api_keys/", "/admin/api/tables/api_keys/count/"]:
        response = await admin_session.get(f"{path}?{query}")
        assert response.status_code == 400, (path, query, response.text)
        assert "key_hash" in response.json()["error"]["message"]


async def test_admin_refuses_the_login_tables_password_column(
    admin_session: httpx.AsyncClient,
) -> None:
    response = await admin_session.get("/admin/api/tables/piccolo_user/?__order=password")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"] == {"columns": ["password"]}


async def test_admin_still_sorts_and_filters_on_other_columns(
    admin_session: httpx.AsyncClient, developer: Caller
) -> None:
    response = await admin_session.get(
        "/admin/api/tables/api_keys/?__order=-prefix&name=test&__visible_fields=id,prefix"
    )
    assert response.status_code == 200, response.text
    [row] = response.json()["rows"]
    assert set(row) == {"id", "prefix"}
