"""The run queue over HTTP (issue 18): claim (scope, validation, filters), priorities,
delayed runs, retry policies validated on write, awaiting_retry visible."""

from __future__ import annotations

import datetime
from typing import Any

import httpx
import pytest

from flowforge.core.errors import ForbiddenError
from flowforge.db.engine import DB
from flowforge.db.tables import Role, Scope
from flowforge.domain import api_keys
from tests.api.conftest import Caller, create_workflow, events, make_caller, trigger

CLAIM = "/api/v1/runs/claim"


@pytest.fixture
async def worker(developer: Caller) -> Caller:
    """A worker-scope key of `developer` (who owns the workflows)."""
    async with DB.transaction():
        key, full_key = await api_keys.create_api_key(
            developer.user_id, name="worker", scopes=[Scope.WORKER]
        )
    return Caller(developer.user_id, developer.email, full_key, key["id"])


async def claim(client: httpx.AsyncClient, caller: Caller, **body: Any) -> httpx.Response:
    return await client.post(CLAIM, json={"worker_id": "w-1", **body}, headers=caller.headers)


async def test_a_worker_key_claims_due_runs_and_drives_them(
    client: httpx.AsyncClient, worker: Caller, developer: Caller
) -> None:
    workflow = await create_workflow(client, developer)
    await DB.fetch(
        "INSERT INTO workflow_runs (workflow_id) SELECT $1::uuid FROM generate_series(1, 3)",
        workflow["id"],
    )
    response = await claim(client, worker, limit=2)
    assert response.status_code == 200, response.text
    runs = response.json()["runs"]
    assert len(runs) == 2
    assert all(r["status"] == "running" and r["claimed_by"] == "w-1" for r in runs)
    run_id = runs[0]["id"]
    beat = await client.post(f"/api/v1/runs/{run_id}/heartbeat", headers=worker.headers)
    assert beat.status_code == 204
    done = await client.post(f"/api/v1/runs/{run_id}/complete", headers=worker.headers)
    assert done.status_code == 200 and done.json()["status"] == "completed"
    # A worker key cannot cancel or trigger: that is write.
    cancel = await client.post(f"/api/v1/runs/{runs[1]['id']}/cancel", headers=worker.headers)
    assert cancel.status_code == 403


@pytest.mark.parametrize("scopes", [(Scope.READ,), (Scope.WRITE,), (Scope.READ, Scope.WRITE)])
async def test_claiming_needs_the_worker_scope(
    client: httpx.AsyncClient, scopes: tuple[Scope, ...]
) -> None:
    caller = await make_caller("nowork@example.com", Role.DEVELOPER, scopes)
    response = await claim(client, caller)
    assert response.status_code == 403
    assert "worker" in response.text


async def test_a_viewer_cannot_hold_the_worker_scope(client: httpx.AsyncClient) -> None:
    with pytest.raises(ForbiddenError, match="worker"):
        await make_caller("v@example.com", Role.VIEWER, (Scope.WORKER,))


@pytest.mark.parametrize(
    "body",
    [
        {"worker_id": ""},
        {"worker_id": "has space"},
        {"worker_id": "w", "limit": 0},
        {"worker_id": "w", "limit": 101},
        {"worker_id": "w", "workflow_ids": []},
        {"worker_id": "w", "workflow_ids": ["not-a-uuid"]},
        {"worker_id": "w", "queue": ""},
        {"worker_id": "w", "surprise": 1},
        {},
    ],
)
async def test_bad_claims_are_422(
    client: httpx.AsyncClient, worker: Caller, body: dict[str, Any]
) -> None:
    response = await client.post(CLAIM, json=body, headers=worker.headers)
    assert response.status_code == 422, response.text


async def test_a_claim_sees_only_the_workers_own_workflows_and_its_filters(
    client: httpx.AsyncClient, worker: Caller, developer: Caller, other_developer: Caller
) -> None:
    mine = await create_workflow(client, developer)
    theirs = await create_workflow(client, other_developer)
    await trigger(client, other_developer, theirs["id"])
    first = await trigger(client, developer, mine["id"])
    assert (await claim(client, worker, workflow_ids=[theirs["id"]])).json()["runs"] == []
    assert (await claim(client, worker, queue="other")).json()["runs"] == []
    [run] = (await claim(client, worker, queue="default", limit=5)).json()["runs"]
    assert run["id"] == first["id"]


async def test_trigger_takes_a_priority_and_a_not_before(
    client: httpx.AsyncClient, worker: Caller, developer: Caller
) -> None:
    workflow = await create_workflow(client, developer)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    low = await trigger(client, developer, workflow["id"], priority=-5)
    high = await trigger(client, developer, workflow["id"], priority=7)
    delayed = await trigger(
        client, developer, workflow["id"], priority=100, not_before=later.isoformat()
    )
    assert high["priority"] == 7 and delayed["not_before"] is not None
    detail = await client.get(f"/api/v1/runs/{delayed['id']}", headers=developer.headers)
    assert detail.json()["waiting_reason"] == "not_before"
    admin_worker = await make_caller("aw@example.com", Role.ADMIN, (Scope.WORKER,))
    claimed = (await claim(client, admin_worker, limit=5)).json()["runs"]
    assert [r["id"] for r in claimed] == [high["id"], low["id"]]


@pytest.mark.parametrize("priority", [101, -101, "high", 1.5])
async def test_an_out_of_range_priority_is_422(
    client: httpx.AsyncClient, developer: Caller, priority: Any
) -> None:
    workflow = await create_workflow(client, developer)
    response = await client.post(
        f"/api/v1/workflows/{workflow['id']}/runs",
        json={"priority": priority},
        headers=developer.headers,
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    "policy",
    [
        {"max_attempts": 0},
        {"max_attempts": 1000},
        {"jitter": 2},
        {"backoff": {"initial_seconds": 0}},
        {"backoff": {"multiplier": 0.5}},
        {"backoff": {"initial_seconds": 10, "max_seconds": 5}},
        {"retries": 3},
        {"jitter": "0.5"},
        {"jitter": True},
    ],
)
async def test_a_bad_retry_policy_is_refused_on_write(
    client: httpx.AsyncClient, developer: Caller, policy: dict[str, Any]
) -> None:
    response = await client.post(
        "/api/v1/workflows",
        json={"name": "p", "steps": [{"name": "s", "action_type": "a", "retry_policy": policy}]},
        headers=developer.headers,
    )
    # The API's own 422, naming the field, comes before the database's
    # workflow_steps_retry_policy_valid (tests/test_retry_policy_check.py).
    assert response.status_code == 422, response.text
    assert "retry_policy" in response.text
    assert "workflow_steps_retry_policy_valid" not in response.text


async def test_a_failed_attempt_under_its_policy_awaits_a_retry_visibly(
    client: httpx.AsyncClient, developer: Caller, worker: Caller
) -> None:
    policy = {"max_attempts": 2, "backoff": {"initial_seconds": 60}}
    workflow = await create_workflow(
        client,
        developer,
        steps=[{"name": "s", "action_type": "a", "retry_policy": policy}],
    )
    assert workflow["steps"][0]["retry_policy"] == policy
    run = await trigger(client, developer, workflow["id"])
    [claimed] = (await claim(client, worker)).json()["runs"]
    assert claimed["id"] == run["id"]
    failed = await client.post(
        f"/api/v1/runs/{run['id']}/step-logs",
        json={"step_position": 0, "status": "failed", "error": "timeout"},
        headers=worker.headers,
    )
    assert failed.status_code == 201, failed.text
    detail = (await client.get(f"/api/v1/runs/{run['id']}", headers=developer.headers)).json()
    assert detail["status"] == "awaiting_retry"
    assert detail["waiting_reason"] == "retry_backoff"
    assert detail["next_attempt_at"] is not None
    [scheduled] = [e for e in await events(run["id"]) if e["event_type"] == "run.retry_scheduled"]
    assert scheduled["payload"]["previous_status"] == "running"
    assert scheduled["payload"]["next_attempt_at"] is not None
    listed = await client.get(
        f"/api/v1/workflows/{workflow['id']}/runs?status=awaiting_retry", headers=developer.headers
    )
    assert [r["id"] for r in listed.json()["items"]] == [run["id"]]
    cancelled = await client.post(f"/api/v1/runs/{run['id']}/cancel", headers=developer.headers)
    assert cancelled.status_code == 200
    [event] = [e for e in await events(run["id"]) if e["event_type"] == "run.cancelled"]
    assert event["payload"]["previous_status"] == "awaiting_retry"
