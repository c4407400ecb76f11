"""A run's history over HTTP: GET /api/v1/runs/{id}/history (issue 17)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from flowforge.db.engine import DB
from tests.api.conftest import Caller, create_workflow, trigger


@pytest.fixture
async def workflow(client: httpx.AsyncClient, developer: Caller) -> dict[str, Any]:
    return await create_workflow(client, developer)


async def post(client: httpx.AsyncClient, caller: Caller, path: str, **body: Any) -> None:
    response = await client.post(path, json=body or None, headers=caller.headers)
    assert response.status_code in (200, 201), response.text


async def every_page(
    client: httpx.AsyncClient, caller: Caller, run_id: Any, limit: int
) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get(
            f"/api/v1/runs/{run_id}/history", params=params, headers=caller.headers
        )
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


async def test_history_names_the_api_key_and_pages_oldest_first(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    run = await trigger(client, developer, workflow["id"])
    path = f"/api/v1/runs/{run['id']}"
    await post(client, developer, f"{path}/start")
    await post(client, developer, f"{path}/step-logs", step_position=0)
    await post(client, developer, f"{path}/step-logs", step_position=1)
    await post(client, developer, f"{path}/cancel", reason="not needed")

    pages = await every_page(client, developer, run["id"], limit=2)
    assert [len(page) for page in pages] == [2, 2, 2, 1]
    items = [item for page in pages for item in page]
    rows = [
        (i["step_position"], i["attempt"], i["from_status"], i["to_status"], i["reason"])
        for i in items
    ]
    assert rows[:5] == [
        (None, None, None, "pending", None),
        (None, None, "pending", "running", None),
        (0, 1, None, "running", None),
        (1, 1, None, "running", None),
        (None, None, "running", "cancelled", "not needed"),
    ]
    # Closed by the run's end, by the statement after the transition.
    assert sorted(rows[5:]) == [
        (0, 1, "running", "cancelled", "run cancelled"),
        (1, 1, "running", "cancelled", "run cancelled"),
    ]
    assert {item["actor"] for item in items} == {f"api_key:{developer.key_id}"}
    assert all(item["run_id"] == run["id"] for item in items)
    times = [item["recorded_at"] for item in items]
    assert times == sorted(times)
    # The whole history in one page is the same history.
    assert await every_page(client, developer, run["id"], limit=200) == [items]


async def test_history_follows_the_visibility_of_the_run(
    client: httpx.AsyncClient,
    developer: Caller,
    other_developer: Caller,
    admin: Caller,
    viewer: Caller,
    workflow: dict[str, Any],
) -> None:
    run = await trigger(client, developer, workflow["id"])
    path = f"/api/v1/runs/{run['id']}/history"
    hidden = await client.get(path, headers=other_developer.headers)
    assert hidden.status_code == 404, hidden.text
    assert hidden.json()["error"]["code"] == "not_found"
    missing = await client.get(f"/api/v1/runs/{uuid.uuid4()}/history", headers=admin.headers)
    assert missing.status_code == 404
    seen = await client.get(path, headers=admin.headers)
    assert seen.status_code == 200 and len(seen.json()["items"]) == 1
    # A viewer sees only its own runs, like GET of a run.
    assert (await client.get(path, headers=viewer.headers)).status_code == 404


async def test_a_run_from_before_the_history_has_an_empty_page(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    run = await trigger(client, developer, workflow["id"])
    # As if it had been created before the migration: no history at all.
    await DB.fetch("ALTER TABLE run_history DISABLE TRIGGER run_history_append_only")
    try:
        await DB.fetch("DELETE FROM run_history WHERE run_id = $1", uuid.UUID(run["id"]))
    finally:
        await DB.fetch("ALTER TABLE run_history ENABLE TRIGGER run_history_append_only")
    response = await client.get(f"/api/v1/runs/{run['id']}/history", headers=developer.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    "params",
    [{"cursor": "nope"}, {"limit": 0}, {"limit": 201}, {"cursor": "1" * 18 + "_" + "0" * 32}],
)
async def test_bad_paging_is_a_422(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any], params: dict[str, Any]
) -> None:
    run = await trigger(client, developer, workflow["id"])
    response = await client.get(
        f"/api/v1/runs/{run['id']}/history", params=params, headers=developer.headers
    )
    assert response.status_code == 422, response.text
