"""Piccolo Admin never lets a logged-in user sort, filter or select on a secret column.

Through the real admin API (the one its UI calls), with a real session login:
ordering API keys by `key_hash` would leak the hashes' order, and filtering on
it (`key_hash__match=starts`) would let anyone with an admin login read a hash
character by character.
"""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import Caller


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
