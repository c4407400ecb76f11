"""The seed's events are the API's events: same types, same payload fields."""

from __future__ import annotations

from collections import defaultdict

import httpx

from flowforge.commands import seed
from tests.api.conftest import Caller, create_workflow, events, trigger


async def payload_keys_by_type(aggregate_ids: set[str] | None = None) -> dict[str, set[str]]:
    keys: dict[str, set[str]] = defaultdict(set)
    for event in await events():
        if aggregate_ids is None or str(event["aggregate_id"]) in aggregate_ids:
            keys[event["event_type"]] |= set(event["payload"])
    return dict(keys)


async def test_seeded_events_have_the_fields_of_real_ones(
    client: httpx.AsyncClient, admin: Caller
) -> None:
    # Real events, through the HTTP API: a user, a workflow, and runs that
    # complete, fail (after a failed attempt) and are cancelled.
    created_user = await client.post(
        "/api/v1/users",
        json={"email": "real@example.com", "display_name": "Real", "role": "developer"},
        headers=admin.headers,
    )
    assert created_user.status_code == 201, created_user.text
    workflow = await create_workflow(client, admin)
    real_ids = {str(created_user.json()["id"]), str(workflow["id"])}
    for outcome in ("complete", "fail", "cancel"):
        run = await trigger(client, admin, workflow["id"], inputs={"n": outcome})
        real_ids.add(str(run["id"]))
        path = f"/api/v1/runs/{run['id']}"
        if outcome != "cancel":
            assert (await client.post(f"{path}/start", headers=admin.headers)).status_code == 200
            logged = await client.post(
                f"{path}/step-logs",
                json={"step_position": 0, "status": "failed", "error": "timed out"},
                headers=admin.headers,
            )
            assert logged.status_code == 201, logged.text
        body = {"fail": {"error": "boom"}, "cancel": {"reason": "stop"}}.get(outcome, {})
        moved = await client.post(f"{path}/{outcome}", json=body, headers=admin.headers)
        assert moved.status_code == 200, moved.text
    real = await payload_keys_by_type(real_ids)

    await seed.seed()
    seeded_only = await payload_keys_by_type(
        {str(event["aggregate_id"]) for event in await events()} - real_ids
    )
    expected_types = {
        "user.created",
        "workflow.created",
        "run.created",
        "run.started",
        "run.step_logged",
        "run.completed",
        "run.failed",
        "run.cancelled",
    }
    assert expected_types <= set(seeded_only)
    for event_type in expected_types:
        assert seeded_only[event_type] == real[event_type], event_type
