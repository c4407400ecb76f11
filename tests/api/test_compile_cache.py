"""The builder's compile cache holds one entry per query shape, whatever clients send.

``queries.compiled`` keeps Piccolo's SQL for each query shape in a module-level
dict. A key built from a value a client sends (a cursor, a page size, an id)
would add an entry per request: memory that grows without bound. Here every
list and read endpoint is paged through with many distinct cursors, page sizes
and filters, and the cache must not grow after the first pass.
"""

from __future__ import annotations

import datetime
import random
import uuid
from typing import Any

import httpx
import pytest

from flowforge.db import builder as queries
from flowforge.db.engine import DB
from flowforge.db.sql import runs as run_sql
from flowforge.domain.pagination import encode_cursor
from tests.api.conftest import Caller, create_workflow, trigger


def some_cursors(count: int) -> list[str]:
    """Distinct valid cursors: positions a client may send, most naming no row."""
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    return [
        encode_cursor(start + datetime.timedelta(seconds=random.randrange(10**9)), uuid.uuid4())
        for _ in range(count)
    ]


async def get_ok(client: httpx.AsyncClient, caller: Caller, path: str, **params: Any) -> Any:
    query = {name: value for name, value in params.items() if value is not None}
    response = await client.get(path, params=query, headers=caller.headers)
    assert response.status_code == 200, (path, query, response.text)
    return response.json()


async def sweep(
    client: httpx.AsyncClient,
    admin: Caller,
    developer: Caller,
    workflow_id: str,
    run_id: str,
    cursors: list[str | None],
    limits: list[int],
) -> None:
    """Every endpoint that reads through a compiled query, with every filter."""
    for cursor in cursors:
        for limit in limits:
            page = {"cursor": cursor, "limit": limit}
            for caller in (admin, developer):
                for is_active in (None, "true", "false"):
                    await get_ok(client, caller, "/api/v1/workflows", is_active=is_active, **page)
                await get_ok(client, caller, "/api/v1/api-keys", **page)
                for status in (None, "pending", "running", "completed"):
                    await get_ok(
                        client,
                        caller,
                        f"/api/v1/workflows/{workflow_id}/runs",
                        status=status,
                        **page,
                    )
            await get_ok(client, admin, "/api/v1/workflows", owner_id=developer.user_id, **page)
            await get_ok(client, admin, "/api/v1/api-keys", user_id=developer.user_id, **page)
            await get_ok(client, admin, "/api/v1/users", **page)
    for caller in (admin, developer):
        await get_ok(client, caller, f"/api/v1/workflows/{workflow_id}")
        await get_ok(client, caller, f"/api/v1/runs/{run_id}")
        await get_ok(client, caller, "/api/v1/me")


async def page_through(
    client: httpx.AsyncClient, caller: Caller, path: str, limit: int
) -> list[Any]:
    """Follow next_cursor from the first page to the last; every item seen."""
    items: list[Any] = []
    cursor = None
    while True:
        body = await get_ok(client, caller, path, limit=limit, cursor=cursor)
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return items


async def test_paging_with_any_cursor_limit_or_filter_adds_no_compiled_query(
    client: httpx.AsyncClient, admin: Caller, developer: Caller
) -> None:
    workflows = [await create_workflow(client, developer, name=f"wf {i}") for i in range(6)]
    workflow_id = workflows[0]["id"]
    run = await trigger(client, developer, workflow_id)
    for i in range(4):
        await trigger(client, developer, workflow_id)
        response = await client.post(
            "/api/v1/api-keys", json={"name": f"key {i}"}, headers=developer.headers
        )
        assert response.status_code == 201, response.text

    # The first pass compiles every shape: with and without a cursor, each filter.
    await sweep(client, admin, developer, workflow_id, run["id"], [None, *some_cursors(1)], [50])
    shapes = queries.compiled_shapes()
    run_shapes = len(run_sql._LIST_RUNS_CACHE)

    await sweep(
        client, admin, developer, workflow_id, run["id"], some_cursors(10), [1, 3, 199, 200]
    )
    for path in (
        "/api/v1/workflows",
        "/api/v1/api-keys",
        "/api/v1/users",
        f"/api/v1/workflows/{workflow_id}/runs",
    ):
        for limit in (1, 2):
            caller = admin if path == "/api/v1/users" else developer
            assert len(await page_through(client, caller, path, limit)) >= 2

    assert queries.compiled_shapes() == shapes
    assert len(run_sql._LIST_RUNS_CACHE) == run_shapes
    assert shapes <= queries.MAX_COMPILED // 4  # the cap is far from what FlowForge needs


async def test_a_key_made_of_values_is_refused(db: None) -> None:
    def build() -> Any:
        raise AssertionError("never built")

    for key in (
        ("test.values", uuid.uuid4()),
        ("test.values", 50),
        ("test.values", True, (datetime.datetime.now(datetime.UTC), uuid.uuid4())),
        ("test.values", "client text"),
        (True,),
        (),
    ):
        with pytest.raises(TypeError, match="Param"):
            queries.compiled(key, build)  # type: ignore[arg-type]


async def test_past_the_cap_queries_run_uncached_with_an_error_logged(
    db: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from flowforge.db.tables import User

    monkeypatch.setattr(queries, "MAX_COMPILED", queries.compiled_shapes())
    before = queries.compiled_shapes()
    for _ in range(3):
        query = queries.compiled(
            "test.past_the_cap",
            lambda: User.select(User.id).where(User.id == queries.Param("id")),
        )
        async with DB.transaction():
            assert await query.fetch(id=uuid.uuid4()) == []
    assert queries.compiled_shapes() == before
    assert "compiled_queries.full" in caplog.text
