"""Queue settings over the API (issue 18): workflows' queue, max_concurrency and named
concurrency limit on create and PATCH, and the /concurrency-limits resource; claims
respect limits set this way."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from flowforge.db.engine import DB
from tests.api.conftest import Caller, create_workflow, events, if_match, trigger
from tests.api.test_queue_api import claim, worker  # noqa: F401 (a fixture)

LIMITS = "/api/v1/concurrency-limits"


async def create_limit(
    client: httpx.AsyncClient, admin: Caller, name: str = "stripe-api", max_running: int = 1
) -> dict[str, Any]:
    response = await client.post(
        LIMITS, json={"name": name, "max_running": max_running}, headers=admin.headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def patch(
    client: httpx.AsyncClient, caller: Caller, workflow: dict[str, Any], **body: Any
) -> httpx.Response:
    return await client.patch(
        f"/api/v1/workflows/{workflow['id']}", json=body, headers=if_match(caller, workflow)
    )


async def running(workflow_ids: list[str]) -> int:
    rows = await DB.fetch(
        "SELECT count(*) AS n FROM workflow_runs WHERE status = 'running' "
        "AND workflow_id = ANY($1::uuid[])",
        workflow_ids,
    )
    return int(rows[0]["n"])


# -- workflows ----------------------------------------------------------------------------


async def test_a_workflow_is_created_with_its_queue_settings(
    client: httpx.AsyncClient, admin: Caller, developer: Caller
) -> None:
    await create_limit(client, admin, max_running=4)
    workflow = await create_workflow(
        client, developer, queue="payments", max_concurrency=2, concurrency_limit="stripe-api"
    )
    assert workflow["queue"] == "payments"
    assert workflow["max_concurrency"] == 2
    assert workflow["concurrency_limit"] == "stripe-api"
    got = await client.get(f"/api/v1/workflows/{workflow['id']}", headers=developer.headers)
    assert {k: got.json()[k] for k in ("queue", "max_concurrency", "concurrency_limit")} == {
        "queue": "payments",
        "max_concurrency": 2,
        "concurrency_limit": "stripe-api",
    }
    listed = await client.get("/api/v1/workflows", headers=developer.headers)
    assert listed.json()["items"][0]["concurrency_limit"] == "stripe-api"
    plain = await create_workflow(client, developer)
    assert (plain["queue"], plain["max_concurrency"], plain["concurrency_limit"]) == (
        "default",
        None,
        None,
    )


async def test_an_unknown_limit_name_is_a_clear_422(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    response = await client.post(
        "/api/v1/workflows",
        json={"name": "w", "concurrency_limit": "nope"},
        headers=developer.headers,
    )
    assert response.status_code == 422, response.text
    assert "no concurrency limit named 'nope'" in response.text
    workflow = await create_workflow(client, developer)
    response = await patch(client, developer, workflow, concurrency_limit="nope")
    assert response.status_code == 422
    assert "no concurrency limit named 'nope'" in response.text


@pytest.mark.parametrize(
    "body",
    [
        {"queue": ""},
        {"queue": "   "},
        {"queue": "q" * 65},
        {"queue": "a\nb"},
        {"max_concurrency": 0},
        {"max_concurrency": -1},
        {"max_concurrency": 2**31},
        {"max_concurrency": "2"},
        {"max_concurrency": True},
        {"concurrency_limit": ""},
        {"concurrency_limit": "x" * 101},
    ],
)
async def test_bad_queue_settings_are_422(
    client: httpx.AsyncClient, developer: Caller, body: dict[str, Any]
) -> None:
    created = await client.post(
        "/api/v1/workflows", json={"name": "w", **body}, headers=developer.headers
    )
    assert created.status_code == 422, created.text
    field = next(iter(body))
    assert field in created.text
    workflow = await create_workflow(client, developer)
    patched = await patch(client, developer, workflow, **body)
    assert patched.status_code == 422, patched.text


async def test_patching_queue_settings_bumps_the_revision_not_the_version(
    client: httpx.AsyncClient, admin: Caller, developer: Caller
) -> None:
    await create_limit(client, admin)
    workflow = await create_workflow(client, developer)
    response = await patch(
        client,
        developer,
        workflow,
        queue="payments",
        max_concurrency=3,
        concurrency_limit="stripe-api",
    )
    assert response.status_code == 200, response.text
    changed = response.json()
    assert changed["revision"] == workflow["revision"] + 1
    assert changed["version"] == workflow["version"]
    assert response.headers["ETag"] == f'"{changed["revision"]}"'
    versions = await client.get(
        f"/api/v1/workflows/{workflow['id']}/versions", headers=developer.headers
    )
    assert len(versions.json()["items"]) == 1
    [event] = [e for e in await events(workflow["id"]) if e["event_type"] == "workflow.updated"]
    assert event["payload"]["changes"] == {
        "queue": "payments",
        "max_concurrency": 3,
        "concurrency_limit": "stripe-api",
    }
    # null removes the cap and detaches the limit; omitted fields stay.
    response = await patch(client, developer, changed, max_concurrency=None, concurrency_limit=None)
    assert response.status_code == 200, response.text
    cleared = response.json()
    assert (cleared["queue"], cleared["max_concurrency"], cleared["concurrency_limit"]) == (
        "payments",
        None,
        None,
    )
    assert cleared["revision"] == changed["revision"] + 1
    # null queue means "leave as is" (a workflow always has a queue).
    same = await patch(client, developer, cleared, queue=None)
    assert same.status_code == 200 and same.json()["revision"] == cleared["revision"]


async def test_patching_queue_settings_needs_a_current_if_match(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    workflow = await create_workflow(client, developer)
    url = f"/api/v1/workflows/{workflow['id']}"
    missing = await client.patch(url, json={"queue": "q"}, headers=developer.headers)
    assert missing.status_code == 428
    ok = await patch(client, developer, workflow, queue="q")
    assert ok.status_code == 200
    stale = await patch(client, developer, workflow, max_concurrency=2)
    assert stale.status_code == 412
    assert "current revision is" in stale.json()["error"]["message"]
    got = await client.get(url, headers=developer.headers)
    assert got.json()["max_concurrency"] is None


# -- the limits resource ------------------------------------------------------------------


async def test_admins_manage_limits_by_name_or_id(
    client: httpx.AsyncClient, admin: Caller, developer: Caller
) -> None:
    limit = await create_limit(client, admin, max_running=5)
    assert limit["name"] == "stripe-api" and limit["workflow_count"] == 0
    by_id = await client.get(f"{LIMITS}/{limit['id']}", headers=developer.headers)
    by_name = await client.get(f"{LIMITS}/stripe-api", headers=developer.headers)
    assert by_id.status_code == by_name.status_code == 200
    assert by_id.json() == by_name.json() == limit
    renamed = await client.patch(
        f"{LIMITS}/stripe-api", json={"name": "stripe", "max_running": 0}, headers=admin.headers
    )
    assert renamed.status_code == 200, renamed.text
    assert (renamed.json()["name"], renamed.json()["max_running"]) == ("stripe", 0)
    assert (await client.get(f"{LIMITS}/stripe-api", headers=admin.headers)).status_code == 404
    deleted = await client.delete(f"{LIMITS}/{limit['id']}", headers=admin.headers)
    assert deleted.status_code == 204
    gone = await client.get(f"{LIMITS}/stripe", headers=admin.headers)
    assert gone.status_code == 404
    assert "There is no concurrency limit 'stripe'" in gone.text
    again = await client.delete(f"{LIMITS}/stripe", headers=admin.headers)
    assert again.status_code == 404
    odd = await client.get(f"{LIMITS}/a%00b", headers=admin.headers)
    assert odd.status_code in (404, 422), odd.text


async def test_the_list_is_keyset_paginated(
    client: httpx.AsyncClient, admin: Caller, developer: Caller
) -> None:
    for index in range(5):
        await create_limit(client, admin, name=f"limit-{index}")
    names: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        response = await client.get(LIMITS, params=params, headers=developer.headers)
        assert response.status_code == 200, response.text
        names += [item["name"] for item in response.json()["items"]]
        cursor = response.json()["next_cursor"]
        if cursor is None:
            break
    assert names == [f"limit-{index}" for index in reversed(range(5))]
    bad = await client.get(LIMITS, params={"cursor": "nope"}, headers=developer.headers)
    assert bad.status_code == 422


async def test_only_admins_change_limits_and_anyone_reads_them(
    client: httpx.AsyncClient, admin: Caller, developer: Caller, viewer: Caller
) -> None:
    await create_limit(client, admin)
    for caller in (developer, viewer):
        created = await client.post(
            LIMITS, json={"name": "mine", "max_running": 1}, headers=caller.headers
        )
        assert created.status_code == 403, created.text
        changed = await client.patch(
            f"{LIMITS}/stripe-api", json={"max_running": 100}, headers=caller.headers
        )
        assert changed.status_code == 403
        deleted = await client.delete(f"{LIMITS}/stripe-api", headers=caller.headers)
        assert deleted.status_code == 403
        assert (await client.get(LIMITS, headers=caller.headers)).status_code == 200
        read = await client.get(f"{LIMITS}/stripe-api", headers=caller.headers)
        assert read.status_code == 200 and read.json()["max_running"] == 1
    anonymous = await client.get(LIMITS)
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x"},
        {"max_running": 1},
        {"name": "", "max_running": 1},
        {"name": "  ", "max_running": 1},
        {"name": "x" * 101, "max_running": 1},
        {"name": "a\x00b", "max_running": 1},
        {"name": "x", "max_running": -1},
        {"name": "x", "max_running": 2**31},
        {"name": "x", "max_running": 1.5},
        {"name": "x", "max_running": "1"},
        {"name": "x", "max_running": None},
        {"name": "x", "max_running": 1, "surprise": True},
        {"name": "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a", "max_running": 1},
    ],
)
async def test_bad_limits_are_422(
    client: httpx.AsyncClient, admin: Caller, body: dict[str, Any]
) -> None:
    response = await client.post(LIMITS, json=body, headers=admin.headers)
    assert response.status_code == 422, response.text


async def test_a_taken_name_is_409(client: httpx.AsyncClient, admin: Caller) -> None:
    await create_limit(client, admin)
    other = await create_limit(client, admin, name="other")
    taken = await client.post(
        LIMITS, json={"name": "stripe-api", "max_running": 2}, headers=admin.headers
    )
    assert taken.status_code == 409
    assert "already exists" in taken.text
    renamed = await client.patch(
        f"{LIMITS}/{other['id']}", json={"name": "stripe-api"}, headers=admin.headers
    )
    assert renamed.status_code == 409
    negative = await client.patch(
        f"{LIMITS}/{other['id']}", json={"max_running": -1}, headers=admin.headers
    )
    assert negative.status_code == 422


async def test_a_limit_in_use_cannot_be_deleted(
    client: httpx.AsyncClient, admin: Caller, developer: Caller
) -> None:
    await create_limit(client, admin)
    workflow = await create_workflow(client, developer, concurrency_limit="stripe-api")
    got = await client.get(f"{LIMITS}/stripe-api", headers=admin.headers)
    assert got.json()["workflow_count"] == 1
    response = await client.delete(f"{LIMITS}/stripe-api", headers=admin.headers)
    assert response.status_code == 409, response.text
    assert "workflows still use it" in response.json()["error"]["message"]
    detached = await patch(client, developer, workflow, concurrency_limit=None)
    assert detached.status_code == 200
    assert (await client.delete(f"{LIMITS}/stripe-api", headers=admin.headers)).status_code == 204


# -- claims respect limits set over the API -------------------------------------------------


async def test_claims_respect_a_named_limit_set_over_the_api(
    client: httpx.AsyncClient,
    admin: Caller,
    developer: Caller,
    worker: Caller,  # noqa: F811 (the fixture)
) -> None:
    await create_limit(client, admin, max_running=2)
    first = await create_workflow(client, developer, concurrency_limit="stripe-api")
    second = await create_workflow(client, developer)
    second = (await patch(client, developer, second, concurrency_limit="stripe-api")).json()
    ids = [first["id"], second["id"]]
    for workflow_id in ids * 3:
        await trigger(client, developer, workflow_id)
    claimed = (await claim(client, worker, limit=10)).json()["runs"]
    assert len(claimed) == 2
    assert await running(ids) == 2
    assert (await claim(client, worker, limit=10)).json()["runs"] == []
    waiting = await client.get(f"/api/v1/workflows/{first['id']}/runs", headers=developer.headers)
    pending = [run for run in waiting.json()["items"] if run["status"] == "pending"]
    detail = await client.get(f"/api/v1/runs/{pending[0]['id']}", headers=developer.headers)
    assert detail.json()["waiting_reason"] == "concurrency_limit:stripe-api"
    # Raising the limit over the API frees a slot at once.
    raised = await client.patch(
        f"{LIMITS}/stripe-api", json={"max_running": 3}, headers=admin.headers
    )
    assert raised.status_code == 200
    assert len((await claim(client, worker, limit=10)).json()["runs"]) == 1
    assert await running(ids) == 3
    # 0 pauses: a finished run frees a slot nobody may take.
    await client.patch(f"{LIMITS}/stripe-api", json={"max_running": 0}, headers=admin.headers)
    done = await client.post(f"/api/v1/runs/{claimed[0]['id']}/complete", headers=worker.headers)
    assert done.status_code == 200
    assert (await claim(client, worker, limit=10)).json()["runs"] == []
    assert await running(ids) == 2


async def test_claims_respect_max_concurrency_set_over_the_api(
    client: httpx.AsyncClient,
    developer: Caller,
    worker: Caller,  # noqa: F811 (the fixture)
) -> None:
    workflow = await create_workflow(client, developer, queue="payments")
    workflow = (await patch(client, developer, workflow, max_concurrency=1)).json()
    for _ in range(3):
        await trigger(client, developer, workflow["id"])
    assert (await claim(client, worker, queue="default")).json()["runs"] == []
    [run] = (await claim(client, worker, queue="payments", limit=5)).json()["runs"]
    assert (await claim(client, worker, queue="payments", limit=5)).json()["runs"] == []
    assert await running([workflow["id"]]) == 1
    detail = await client.get(f"/api/v1/runs/{run['id']}", headers=developer.headers)
    assert detail.json()["status"] == "running"
    # Lifting the cap (null) lets the rest through.
    lifted = await patch(client, developer, workflow, max_concurrency=None)
    assert lifted.status_code == 200, lifted.text
    assert len((await claim(client, worker, queue="payments", limit=5)).json()["runs"]) == 2
    assert await running([workflow["id"]]) == 3


async def test_of_two_operators_holding_one_etag_one_changes_the_settings(
    client: httpx.AsyncClient, admin: Caller, developer: Caller
) -> None:
    await create_limit(client, admin)
    workflow = await create_workflow(client, developer)
    first, second = await asyncio.gather(
        patch(client, developer, workflow, max_concurrency=5),
        patch(client, developer, workflow, concurrency_limit="stripe-api"),
    )
    assert sorted([first.status_code, second.status_code]) == [200, 412]
    got = (
        await client.get(f"/api/v1/workflows/{workflow['id']}", headers=developer.headers)
    ).json()
    assert got["revision"] == workflow["revision"] + 1
    assert (got["max_concurrency"] == 5) != (got["concurrency_limit"] == "stripe-api")
