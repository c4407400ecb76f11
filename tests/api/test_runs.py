"""Runs over HTTP: trigger (idempotent), list with filters and cursors, read, lifecycle, attempts."""

from __future__ import annotations

import asyncio
import datetime
import json
from typing import Any

import asyncpg
import httpx
import pytest

from flowforge.core import events as contract
from flowforge.db.engine import DB
from flowforge.db.sql import api_keys as api_key_sql
from flowforge.db.sql import runs as run_sql
from tests import support
from tests.api.conftest import (
    Caller,
    count,
    create_workflow,
    events,
    forget_remembered_keys,
    if_match,
    trigger,
)


@pytest.fixture
async def workflow(client: httpx.AsyncClient, developer: Caller) -> dict[str, Any]:
    return await create_workflow(client, developer)


async def post(client: httpx.AsyncClient, caller: Caller, path: str, **body: Any) -> httpx.Response:
    return await client.post(path, json=body or None, headers=caller.headers)


# -- trigger -----------------------------------------------------------------------------


async def test_trigger_creates_a_pending_run_and_its_event(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    response = await client.post(
        f"/api/v1/workflows/{workflow['id']}/runs",
        json={"inputs": {"day": "2026-01-05", "n": 3}},
        headers=developer.headers,
    )
    assert response.status_code == 201
    run = response.json()
    assert response.headers["location"] == f"/api/v1/runs/{run['id']}"
    assert run["status"] == "pending"
    assert run["inputs"] == {"day": "2026-01-05", "n": 3}
    assert run["triggered_by_user_id"] == str(developer.user_id)
    assert run["trigger_type"] == "manual"
    assert run["replayed"] is False
    assert run["started_at"] is None and run["finished_at"] is None
    [event] = await events(run["id"])
    assert event["event_type"] == "run.created"
    assert event["aggregate_type"] == contract.WORKFLOW_RUN
    expected = contract.run_payload({**run, "error": None}, None)
    assert {k: event["payload"][k] for k in expected} == expected
    assert event["payload"]["inputs"] == run["inputs"]
    assert event["payload"]["triggered_by_user_id"] == str(developer.user_id)


async def test_idempotency_key_replays_the_same_run(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    path = f"/api/v1/workflows/{workflow['id']}/runs"
    headers = {**developer.headers, "Idempotency-Key": "order-42"}
    first = await client.post(path, json={"inputs": {"a": 1}}, headers=headers)
    again = await client.post(path, json={"inputs": {"a": 1}}, headers=headers)
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["replayed"] is True
    assert await count("workflow_runs") == 1
    assert len(await events(first.json()["id"])) == 1  # no second run.created


async def test_idempotency_key_with_different_inputs_is_a_409(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    path = f"/api/v1/workflows/{workflow['id']}/runs"
    headers = {**developer.headers, "Idempotency-Key": "order-42"}
    assert (await client.post(path, json={"inputs": {"a": 1}}, headers=headers)).status_code == 201
    response = await client.post(path, json={"inputs": {"a": 2}}, headers=headers)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_conflict"
    assert await count("workflow_runs") == 1


async def test_the_same_idempotency_key_on_another_workflow_is_another_run(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    second = await create_workflow(client, developer, name="Second")
    headers = {**developer.headers, "Idempotency-Key": "k"}
    for wf in (workflow, second):
        response = await client.post(f"/api/v1/workflows/{wf['id']}/runs", json={}, headers=headers)
        assert response.status_code == 201


async def test_concurrent_triggers_with_one_key_make_one_run(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    path = f"/api/v1/workflows/{workflow['id']}/runs"
    headers = {**developer.headers, "Idempotency-Key": "same"}
    responses = await asyncio.gather(
        *(client.post(path, json={"inputs": {"x": 1}}, headers=headers) for _ in range(6))
    )
    assert sorted(r.status_code for r in responses) == [200] * 5 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert await count("workflow_runs") == 1


async def test_trigger_refuses_inactive_missing_and_foreign_workflows(
    client: httpx.AsyncClient,
    developer: Caller,
    other_developer: Caller,
    workflow: dict[str, Any],
) -> None:
    foreign = await client.post(
        f"/api/v1/workflows/{workflow['id']}/runs", json={}, headers=other_developer.headers
    )
    assert foreign.status_code == 404
    missing = await client.post(
        "/api/v1/workflows/00000000-0000-0000-0000-000000000000/runs",
        json={},
        headers=developer.headers,
    )
    assert missing.status_code == 404
    await post(client, developer, f"/api/v1/workflows/{workflow['id']}/deactivate")
    inactive = await client.post(
        f"/api/v1/workflows/{workflow['id']}/runs", json={}, headers=developer.headers
    )
    assert inactive.status_code == 409
    assert inactive.json()["error"]["code"] == "workflow_inactive"
    assert await count("workflow_runs") == 0


async def test_replay_still_works_after_the_workflow_was_deactivated(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    path = f"/api/v1/workflows/{workflow['id']}/runs"
    headers = {**developer.headers, "Idempotency-Key": "k1"}
    first = await client.post(path, json={}, headers=headers)
    await post(client, developer, f"/api/v1/workflows/{workflow['id']}/deactivate")
    again = await client.post(path, json={}, headers=headers)
    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])


# -- lifecycle ---------------------------------------------------------------------------


async def test_a_run_goes_pending_running_completed_with_events(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    run = await trigger(client, developer, workflow["id"])
    started = await post(client, developer, f"/api/v1/runs/{run['id']}/start")
    assert started.status_code == 200
    assert started.json()["status"] == "running"
    assert started.json()["started_at"] is not None
    done = await post(client, developer, f"/api/v1/runs/{run['id']}/complete", outputs={"rows": 10})
    assert done.status_code == 200
    body = done.json()
    assert body["status"] == "completed"
    assert body["outputs"] == {"rows": 10}
    assert body["finished_at"] >= body["started_at"]
    kinds = [(e["event_type"], e["payload"]["previous_status"]) for e in await events(run["id"])]
    assert kinds == [
        ("run.created", None),
        ("run.started", "pending"),
        ("run.completed", "running"),
    ]
    completed = (await events(run["id"]))[-1]["payload"]
    assert completed["outputs"] == {"rows": 10}
    assert datetime.datetime.fromisoformat(
        completed["finished_at"]
    ) == datetime.datetime.fromisoformat(body["finished_at"])


async def test_fail_records_the_error(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    run = await trigger(client, developer, workflow["id"])
    await post(client, developer, f"/api/v1/runs/{run['id']}/start")
    failed = await post(client, developer, f"/api/v1/runs/{run['id']}/fail", error="boom")
    assert failed.status_code == 200
    assert (failed.json()["status"], failed.json()["error"]) == ("failed", "boom")
    last = (await events(run["id"]))[-1]
    assert (last["event_type"], last["payload"]["error"]) == ("run.failed", "boom")
    no_error = await client.post(
        f"/api/v1/runs/{run['id']}/fail", json={}, headers=developer.headers
    )
    assert no_error.status_code == 422


@pytest.mark.parametrize("started", [False, True])
async def test_cancel_from_pending_or_running(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any], started: bool
) -> None:
    run = await trigger(client, developer, workflow["id"])
    if started:
        await post(client, developer, f"/api/v1/runs/{run['id']}/start")
    cancelled = await post(
        client, developer, f"/api/v1/runs/{run['id']}/cancel", reason="not needed"
    )
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert (body["status"], body["error"]) == ("cancelled", "not needed")
    assert (body["started_at"] is not None) is started
    last = (await events(run["id"]))[-1]
    assert last["event_type"] == "run.cancelled"
    assert last["payload"]["previous_status"] == ("running" if started else "pending")


async def test_cancel_without_a_body(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    run = await trigger(client, developer, workflow["id"])
    response = await client.post(f"/api/v1/runs/{run['id']}/cancel", headers=developer.headers)
    assert response.status_code == 200
    assert response.json()["error"] is None


@pytest.mark.parametrize(
    ("path", "action", "current", "requested"),
    [
        ([], "complete", "pending", "completed"),
        ([], "fail", "pending", "failed"),
        (["start"], "start", "running", "running"),
        (["start", "complete"], "cancel", "completed", "cancelled"),
        (["start", "complete"], "start", "completed", "running"),
        (["cancel"], "start", "cancelled", "running"),
        (["cancel"], "cancel", "cancelled", "cancelled"),
    ],
)
async def test_illegal_transitions_are_409_naming_both_states(
    client: httpx.AsyncClient,
    developer: Caller,
    workflow: dict[str, Any],
    path: list[str],
    action: str,
    current: str,
    requested: str,
) -> None:
    run = await trigger(client, developer, workflow["id"])
    for step in path:
        assert (
            await post(client, developer, f"/api/v1/runs/{run['id']}/{step}")
        ).status_code == 200
    before = await count("outbox")
    body = {"error": "x"} if action == "fail" else {}
    response = await post(client, developer, f"/api/v1/runs/{run['id']}/{action}", **body)
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "invalid_transition"
    assert error["details"]["current_status"] == current
    assert error["details"]["requested_status"] == requested
    assert current in error["message"]
    assert await count("outbox") == before  # nothing written


async def test_two_concurrent_transitions_of_one_run_exactly_one_wins(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    for _ in range(5):
        run = await trigger(client, developer, workflow["id"])
        await post(client, developer, f"/api/v1/runs/{run['id']}/start")
        # Two real requests, each in its own transaction on its own connection.
        complete, fail = await asyncio.gather(
            post(client, developer, f"/api/v1/runs/{run['id']}/complete"),
            post(client, developer, f"/api/v1/runs/{run['id']}/fail", error="lost race?"),
        )
        statuses = sorted([complete.status_code, fail.status_code])
        assert statuses == [200, 409], (complete.text, fail.text)
        winner = complete if complete.status_code == 200 else fail
        loser = fail if winner is complete else complete
        final = winner.json()["status"]
        assert loser.json()["error"]["details"]["current_status"] == final
        terminal = [e for e in await events(run["id"]) if e["event_type"] != "run.created"]
        assert [e["event_type"] for e in terminal] == ["run.started", f"run.{final}"]


async def test_concurrent_transitions_in_raw_transactions_one_wins(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any], database_url: str
) -> None:
    """The domain function itself: two open transactions race; the loser waits, then loses."""
    from flowforge.core.errors import InvalidTransitionError
    from flowforge.domain import runs

    run = await trigger(client, developer, workflow["id"])
    run_id = run["id"]
    started, release = asyncio.Event(), asyncio.Event()

    async def first() -> str:
        async with DB.transaction():
            result = await runs.transition_run(run_id, "start")
            started.set()
            await release.wait()  # hold the row lock while the other one waits
        return str(result["status"])

    async def second() -> str:
        await started.wait()
        async with DB.transaction():
            try:
                await runs.transition_run(run_id, "cancel")
            except InvalidTransitionError:
                return "lost"
        return "won"

    racing = asyncio.gather(first(), second())
    # The server's lock state, not a guess of time: the second waits for the first.
    await support.wait_for_lock_waiter(database_url, run_sql.TRANSITION_RUN[:60])
    release.set()
    results = await asyncio.wait_for(racing, 30)
    # cancel is legal from running too, so the second wins *after* the first:
    # it saw the committed "running" state, never the stale "pending".
    assert results == ["running", "won"]
    cancel_event = (await events(run_id))[-1]
    assert cancel_event["payload"]["previous_status"] == "running"


async def test_transition_of_unknown_or_foreign_run_is_404(
    client: httpx.AsyncClient, developer: Caller, other_developer: Caller, workflow: dict[str, Any]
) -> None:
    run = await trigger(client, developer, workflow["id"])
    assert (
        await post(client, other_developer, f"/api/v1/runs/{run['id']}/start")
    ).status_code == 404
    missing = "/api/v1/runs/00000000-0000-0000-0000-000000000000/start"
    assert (await post(client, developer, missing)).status_code == 404
    assert (
        await client.get(f"/api/v1/runs/{run['id']}", headers=other_developer.headers)
    ).status_code == 404


# -- listing -----------------------------------------------------------------------------


async def test_list_runs_newest_first_with_cursor_pages(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    made = [await trigger(client, developer, workflow["id"], inputs={"i": i}) for i in range(7)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        response = await client.get(
            f"/api/v1/workflows/{workflow['id']}/runs", params=params, headers=developer.headers
        )
        assert response.status_code == 200
        body = response.json()
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        # A run created between pages does not shift or repeat anything.
        if pages == 1:
            await trigger(client, developer, workflow["id"], inputs={"late": True})
    assert pages == 3
    assert seen == [run["id"] for run in reversed(made)]


async def test_list_runs_filters_by_status(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    runs = [await trigger(client, developer, workflow["id"]) for _ in range(4)]
    for run in runs[:2]:
        await post(client, developer, f"/api/v1/runs/{run['id']}/start")
    await post(client, developer, f"/api/v1/runs/{runs[0]['id']}/complete")
    path = f"/api/v1/workflows/{workflow['id']}/runs"
    by_status = {}
    for status in ("pending", "running", "completed", "failed"):
        response = await client.get(path, params={"status": status}, headers=developer.headers)
        by_status[status] = [item["id"] for item in response.json()["items"]]
    assert by_status == {
        "pending": [runs[3]["id"], runs[2]["id"]],
        "running": [runs[1]["id"]],
        "completed": [runs[0]["id"]],
        "failed": [],
    }
    # Status filter and cursor together.
    first = await client.get(
        path, params={"status": "pending", "limit": 1}, headers=developer.headers
    )
    second = await client.get(
        path,
        params={"status": "pending", "limit": 1, "cursor": first.json()["next_cursor"]},
        headers=developer.headers,
    )
    assert [i["id"] for i in second.json()["items"]] == [runs[2]["id"]]
    assert second.json()["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"status": "sleeping"}, "validation_error"),
        ({"limit": 0}, "validation_error"),
        ({"limit": 201}, "validation_error"),
        ({"limit": -1}, "validation_error"),
        ({"cursor": "not-a-cursor"}, "validation_error"),
        ({"cursor": "bm90fGF8dXVpZA"}, "validation_error"),
        ({"cursor": ""}, "validation_error"),
        ({"cursor": "x" * 300}, "validation_error"),
        ({"cursor": "abc$%"}, "validation_error"),
    ],
)
async def test_list_runs_rejects_bad_parameters(
    client: httpx.AsyncClient,
    developer: Caller,
    workflow: dict[str, Any],
    params: dict[str, Any],
    code: str,
) -> None:
    response = await client.get(
        f"/api/v1/workflows/{workflow['id']}/runs", params=params, headers=developer.headers
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == code


async def test_list_runs_of_missing_or_foreign_workflow_is_404_and_empty_is_empty(
    client: httpx.AsyncClient, developer: Caller, other_developer: Caller, workflow: dict[str, Any]
) -> None:
    path = f"/api/v1/workflows/{workflow['id']}/runs"
    assert (await client.get(path, headers=other_developer.headers)).status_code == 404
    empty = await client.get(path, headers=developer.headers)
    assert empty.json() == {"items": [], "next_cursor": None}


# -- step attempts -----------------------------------------------------------------------


async def running_run(
    client: httpx.AsyncClient, caller: Caller, workflow: dict[str, Any]
) -> dict[str, Any]:
    run = await trigger(client, caller, workflow["id"])
    await post(client, caller, f"/api/v1/runs/{run['id']}/start")
    return run


async def test_step_attempts_are_numbered_by_the_server_and_returned_in_order(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    run = await running_run(client, developer, workflow)
    path = f"/api/v1/runs/{run['id']}/step-logs"
    first = await post(client, developer, path, step_position=0, status="failed", error="timeout")
    assert first.status_code == 201
    assert (first.json()["attempt"], first.json()["step_name"]) == (1, "Query")
    second = await post(
        client, developer, path, step_position=0, status="completed", output={"n": 1}
    )
    assert second.json()["attempt"] == 2
    third = await post(client, developer, path, step_position=1, input={"rows": 1})
    assert (third.json()["attempt"], third.json()["status"]) == (1, "running")
    assert third.json()["finished_at"] is None

    detail = await client.get(f"/api/v1/runs/{run['id']}", headers=developer.headers)
    logs = detail.json()["step_logs"]
    assert [(log["step_position"], log["attempt"], log["status"]) for log in logs] == [
        (0, 1, "failed"),
        (0, 2, "completed"),
        (1, 1, "running"),
    ]
    assert logs[0]["error"] == "timeout"
    assert logs[1]["output"] == {"n": 1}
    assert logs[2]["input"] == {"rows": 1}
    # Heartbeat: logging bumps the run's updated_at.
    assert detail.json()["updated_at"] > run["updated_at"]
    logged = [e for e in await events(run["id"]) if e["event_type"] == "run.step_logged"]
    assert [e["payload"]["attempt"] for e in logged] == [1, 2, 1]
    assert logged[0]["payload"]["workflow_id"] == workflow["id"]

    finish = await post(
        client,
        developer,
        f"/api/v1/runs/{run['id']}/step-logs/{third.json()['id']}/finish",
        status="completed",
        output={"ok": True},
    )
    assert finish.status_code == 200
    assert finish.json()["status"] == "completed"
    assert finish.json()["finished_at"] is not None
    again = await post(
        client,
        developer,
        f"/api/v1/runs/{run['id']}/step-logs/{third.json()['id']}/finish",
        status="failed",
        error="late",
    )
    assert again.status_code == 409
    assert again.json()["error"]["details"]["current_status"] == "completed"


async def test_concurrent_attempts_get_distinct_numbers(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    run = await running_run(client, developer, workflow)
    path = f"/api/v1/runs/{run['id']}/step-logs"
    responses = await asyncio.gather(
        *(post(client, developer, path, step_position=2, status="completed") for _ in range(8))
    )
    assert all(r.status_code == 201 for r in responses), [r.text for r in responses]
    assert sorted(r.json()["attempt"] for r in responses) == list(range(1, 9))


async def test_attempts_need_a_running_run_and_an_existing_step(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    run = await trigger(client, developer, workflow["id"])
    path = f"/api/v1/runs/{run['id']}/step-logs"
    pending = await post(client, developer, path, step_position=0)
    assert pending.status_code == 409
    assert pending.json()["error"]["details"]["current_status"] == "pending"
    await post(client, developer, f"/api/v1/runs/{run['id']}/start")
    missing_step = await post(client, developer, path, step_position=9)
    assert missing_step.status_code == 404
    assert "position 9" in missing_step.json()["error"]["message"]
    unknown = await post(
        client,
        developer,
        "/api/v1/runs/00000000-0000-0000-0000-000000000000/step-logs",
        step_position=0,
    )
    assert unknown.status_code == 404
    bad = [
        {"step_position": -1},
        {"step_position": 0, "status": "pending"},
        {"step_position": 0, "status": "failed"},
        {"step_position": 0, "status": "completed", "error": "x"},
        {"step_position": 0, "surprise": 1},
    ]
    for body in bad:
        response = await client.post(path, json=body, headers=developer.headers)
        assert response.status_code == 422, body
    assert await count("run_step_logs") == 0


async def test_ending_a_run_closes_its_open_attempts(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    run = await running_run(client, developer, workflow)
    log = (
        await post(client, developer, f"/api/v1/runs/{run['id']}/step-logs", step_position=0)
    ).json()
    await post(client, developer, f"/api/v1/runs/{run['id']}/cancel")
    detail = (await client.get(f"/api/v1/runs/{run['id']}", headers=developer.headers)).json()
    assert detail["step_logs"][0]["id"] == log["id"]
    assert detail["step_logs"][0]["status"] == "cancelled"
    finished = await post(
        client,
        developer,
        f"/api/v1/runs/{run['id']}/step-logs/{log['id']}/finish",
        status="completed",
    )
    assert finished.status_code == 409


async def test_step_logs_keep_their_step_when_steps_are_replaced(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    """Replacing the steps is version 2; the run stays on version 1, its logs on its steps."""
    run = await running_run(client, developer, workflow)
    await post(client, developer, f"/api/v1/runs/{run['id']}/step-logs", step_position=1)
    replaced = await client.put(
        f"/api/v1/workflows/{workflow['id']}/steps",
        json={"steps": [{"name": "Only", "action_type": "noop"}]},
        headers=if_match(developer, workflow),
    )
    assert replaced.status_code == 200
    # Position 2 exists only in version 1, which the run is pinned to.
    later = await post(client, developer, f"/api/v1/runs/{run['id']}/step-logs", step_position=2)
    assert later.status_code == 201, later.text
    detail = (await client.get(f"/api/v1/runs/{run['id']}", headers=developer.headers)).json()
    assert detail["workflow_version"] == 1
    first, second = detail["step_logs"]
    assert (first["step_id"], first["step_position"], first["step_name"]) == (
        workflow["steps"][1]["id"],
        1,
        "Render",
    )
    assert (second["step_id"], second["step_name"]) == (workflow["steps"][2]["id"], "Email")


def _normalise(payload: dict[str, Any]) -> dict[str, Any]:
    """Timestamps parsed, ids as text: the same facts whatever the serialisation."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        if key.endswith("_at") and isinstance(value, str):
            out[key] = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        else:
            out[key] = str(value) if key.endswith("_id") and value is not None else value
    return out


async def test_run_event_payloads_follow_the_events_contract(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    """Payloads built in SQL carry exactly events.run_payload's facts (plus extras)."""
    run = await trigger(client, developer, workflow["id"])
    states = [run]
    previous = [None, "pending", "running"]
    for action, body in (("start", {}), ("fail", {"error": "boom"})):
        response = await post(client, developer, f"/api/v1/runs/{run['id']}/{action}", **body)
        states.append(response.json())
    emitted = await events(run["id"])
    assert [e["event_type"] for e in emitted] == ["run.created", "run.started", "run.failed"]
    for event, state, before in zip(emitted, states, previous, strict=True):
        expected = _normalise(contract.run_payload(state, before))
        got = _normalise(event["payload"])
        assert {key: got[key] for key in expected} == expected, event["event_type"]
        assert event["payload"]["started_at"] is None or event["payload"]["started_at"].endswith(
            "+00:00"
        )


async def test_heartbeat_renews_the_lease_of_a_running_run_only(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    run = await trigger(client, developer, workflow["id"])
    path = f"/api/v1/runs/{run['id']}/heartbeat"
    pending = await post(client, developer, path)
    assert pending.status_code == 409
    assert pending.json()["error"]["details"]["current_status"] == "pending"
    await post(client, developer, f"/api/v1/runs/{run['id']}/start")
    before = (await DB.fetch("SELECT heartbeat_at FROM workflow_runs WHERE id = $1", run["id"]))[0]
    assert (await post(client, developer, path)).status_code == 204
    after = (await DB.fetch("SELECT heartbeat_at FROM workflow_runs WHERE id = $1", run["id"]))[0]
    assert after["heartbeat_at"] is not None
    assert before["heartbeat_at"] is None or after["heartbeat_at"] > before["heartbeat_at"]
    unknown = await post(
        client, developer, "/api/v1/runs/00000000-0000-0000-0000-000000000000/heartbeat"
    )
    assert unknown.status_code == 404


async def test_an_attempt_committed_while_the_run_ends_is_closed_with_it(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any], database_url: str
) -> None:
    """The ending transition waits for the run's row lock held by an append; the
    attempt that append commits must be closed too, not left running forever."""
    from uuid import UUID

    from flowforge.domain import runs

    run_id = UUID((await running_run(client, developer, workflow))["id"])
    appended, release = asyncio.Event(), asyncio.Event()

    async def append() -> None:
        async with DB.transaction():
            await runs.append_step_log(run_id, step_position=0)  # a running attempt
            appended.set()
            await release.wait()  # hold the run's row lock while the run ends

    async def complete() -> dict[str, Any]:
        await appended.wait()
        async with DB.transaction():
            return await runs.transition_run(run_id, "complete")

    appending, completing = asyncio.create_task(append()), asyncio.create_task(complete())
    await appended.wait()
    # The transition's statement waits for the lock (the server's lock state,
    # not a guess of time) before the append commits.
    await support.wait_for_lock_waiter(database_url, run_sql.TRANSITION_RUN[:60])
    release.set()
    _, completed = await asyncio.wait_for(asyncio.gather(appending, completing), 10)
    assert completed["status"] == "completed"
    logs = await DB.fetch("SELECT status, finished_at FROM run_step_logs WHERE run_id = $1", run_id)
    assert [(row["status"], row["finished_at"] is not None) for row in logs] == [
        ("cancelled", True)
    ]


async def published(run_id: str) -> list[dict[str, Any]]:
    """A run's events in publishing order: seq, which is commit order for one
    aggregate (created_at is its transaction's start, and these races commit
    the transaction that began first last)."""
    rows = await DB.fetch(
        "SELECT event_type, payload FROM outbox WHERE aggregate_id = $1 ORDER BY seq", run_id
    )
    return [
        {"event_type": row["event_type"], "payload": json.loads(row["payload"])} for row in rows
    ]


ENDINGS: dict[str, tuple[dict[str, Any], str]] = {
    "complete": ({}, "completed"),
    "fail": ({"error": "boom"}, "failed"),
    "cancel": ({}, "cancelled"),
}


@pytest.mark.parametrize("action", sorted(ENDINGS))
async def test_a_run_ends_while_an_attempt_that_began_later_is_appended(
    client: httpx.AsyncClient,
    developer: Caller,
    workflow: dict[str, Any],
    database_url: str,
    action: str,
) -> None:
    """Issue 15, 1: the ending request's transaction begins first; an append that
    begins later takes the run's lock first and commits its attempt. Once the end
    holds the lock it must succeed and close that attempt (it answered 409
    run_step_logs_timestamps_match_status: the attempt was closed at the end's
    transaction start, before the attempt had started)."""

    body, status = ENDINGS[action]
    run_id = (await running_run(client, developer, workflow))["id"]
    holder = await asyncpg.connect(database_url, statement_cache_size=0)
    try:
        async with holder.transaction():
            # Both statements write an event, and a statement takes its table
            # locks before it runs: while the outbox is held, the end waits
            # before it locks the run, the append after it has (its lease
            # renewal, LOCK_RUNNING_RUN, writes no event).
            await holder.execute("LOCK TABLE outbox IN SHARE MODE")
            ending = asyncio.create_task(
                post(client, developer, f"/api/v1/runs/{run_id}/{action}", **body)
            )
            await support.wait_for_lock_waiter(database_url, run_sql.TRANSITION_RUN[:60])
            appending = asyncio.create_task(
                post(client, developer, f"/api/v1/runs/{run_id}/step-logs", step_position=0)
            )
            await support.wait_for_lock_waiter(database_url, run_sql.APPEND_STEP_LOG[:60])
        ended, appended = await asyncio.wait_for(asyncio.gather(ending, appending), 30)
    finally:
        await holder.close()
    assert appended.status_code == 201, appended.text
    assert ended.status_code == 200, ended.text
    run = ended.json()
    assert run["status"] == status
    [log] = (await client.get(f"/api/v1/runs/{run_id}", headers=developer.headers)).json()[
        "step_logs"
    ]
    assert (log["id"], log["status"]) == (appended.json()["id"], "cancelled")
    assert log["started_at"] <= log["finished_at"]
    assert run["started_at"] <= run["finished_at"]
    published_events = await published(run_id)
    assert [e["event_type"] for e in published_events][-3:] == [
        "run.step_logged",
        f"run.{status}",
        # The attempt closed by the run's end (issue 17).
        "run.step_logged",
    ]
    closed = published_events[-1]["payload"]
    assert (closed["step_log_id"], closed["status"], closed["error"]) == (
        log["id"],
        "cancelled",
        f"run {status}",
    )


async def test_a_run_ends_after_a_start_that_began_later(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any], database_url: str
) -> None:
    """The same race on the run itself: a cancel's transaction begins, a start
    that began later commits first, then the cancel ends the now running run (it
    answered 409 workflow_runs_timestamps_match_status: finished before it started)."""
    from flowforge.domain import runs

    run_id = (await trigger(client, developer, workflow["id"]))["id"]
    holder = await asyncpg.connect(database_url, statement_cache_size=0)
    try:
        async with holder.transaction():
            # Holds the request in its authentication, after its BEGIN (the
            # key looked up, not remembered from the trigger).
            await holder.execute("LOCK TABLE api_keys IN SHARE MODE")
            forget_remembered_keys()
            cancelling = asyncio.create_task(
                post(client, developer, f"/api/v1/runs/{run_id}/cancel")
            )
            await support.wait_for_lock_waiter(database_url, api_key_sql.AUTHENTICATE[:60])
            async with DB.transaction():  # an executor's start: no key, no wait
                await runs.transition_run(run_id, "start")
        cancelled = await asyncio.wait_for(cancelling, 30)
    finally:
        await holder.close()
    assert cancelled.status_code == 200, cancelled.text
    run = cancelled.json()
    assert run["status"] == "cancelled"
    assert run["started_at"] <= run["finished_at"]
    assert [
        (e["event_type"], e["payload"]["previous_status"]) for e in await published(run_id)
    ] == [
        ("run.created", None),
        ("run.started", "pending"),
        ("run.cancelled", "running"),
    ]


@pytest.mark.parametrize("operation", ["step-logs", "finish", "heartbeat"])
async def test_a_run_ended_while_an_attempt_waits_refuses_it_cleanly(
    client: httpx.AsyncClient,
    developer: Caller,
    workflow: dict[str, Any],
    database_url: str,
    operation: str,
) -> None:
    """The opposite race: an append (or finish, heartbeat) that waits for the lock
    of a run being completed is refused with a 409 naming the new state, not a 500."""

    run_id = (await running_run(client, developer, workflow))["id"]
    attempt = (
        await post(client, developer, f"/api/v1/runs/{run_id}/step-logs", step_position=0)
    ).json()
    path, body = {
        "step-logs": (f"/api/v1/runs/{run_id}/step-logs", {"step_position": 1}),
        "finish": (
            f"/api/v1/runs/{run_id}/step-logs/{attempt['id']}/finish",
            {"status": "completed"},
        ),
        "heartbeat": (f"/api/v1/runs/{run_id}/heartbeat", {}),
    }[operation]
    holder = await asyncpg.connect(database_url, statement_cache_size=0)
    try:
        async with holder.transaction():
            # The end holds the run's row lock and waits to close the attempts.
            await holder.execute("LOCK TABLE run_step_logs IN SHARE MODE")
            ending = asyncio.create_task(post(client, developer, f"/api/v1/runs/{run_id}/complete"))
            await support.wait_for_lock_waiter(database_url, run_sql.CLOSE_ATTEMPTS[:60])
            late = asyncio.create_task(post(client, developer, path, **body))
            await support.wait_for_lock_waiter(database_url, run_sql.LOCK_RUNNING_RUN[:60])
        ended, refused = await asyncio.wait_for(asyncio.gather(ending, late), 30)
    finally:
        await holder.close()
    assert ended.status_code == 200, ended.text
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["details"]["current_status"]) == (
        "invalid_transition",
        "completed",
    )
    [log] = (await client.get(f"/api/v1/runs/{run_id}", headers=developer.headers)).json()[
        "step_logs"
    ]
    assert log["status"] == "cancelled"


async def test_the_reaper_passes_over_a_run_whose_attempt_is_being_appended(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any], database_url: str
) -> None:
    """The reaper path does not share the race: it claims with SKIP LOCKED, so it
    never waits for an append (nor closes an attempt that began after it), and an
    append queued behind a reaped run is a clean 409."""
    from flowforge.jobs import reaper

    run_id = (await running_run(client, developer, workflow))["id"]
    holder = await asyncpg.connect(database_url, statement_cache_size=0)
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE outbox IN SHARE MODE")
            appending = asyncio.create_task(
                post(client, developer, f"/api/v1/runs/{run_id}/step-logs", step_position=0)
            )
            await support.wait_for_lock_waiter(database_url, run_sql.APPEND_STEP_LOG[:60])
            # Even with no lease at all, the run whose lock the append holds is
            # skipped, not waited for (a claim would wait on the outbox: timeout).
            skipped = await asyncio.wait_for(reaper.reap_stuck_runs(0.0), 10)
        appended = await asyncio.wait_for(appending, 30)
    finally:
        await holder.close()
    assert skipped.runs == []
    assert appended.status_code == 201, appended.text

    claimed, release = asyncio.Event(), asyncio.Event()

    async def reap() -> list[Any]:
        async with DB.transaction():
            reaped = await reaper.reap_batch(0.0, 10)
            claimed.set()
            await release.wait()  # the run stays locked, failed but not committed
        return reaped

    reaping = asyncio.create_task(reap())
    await claimed.wait()
    late = asyncio.create_task(
        post(client, developer, f"/api/v1/runs/{run_id}/step-logs", step_position=1)
    )
    await support.wait_for_lock_waiter(database_url, run_sql.LOCK_RUNNING_RUN[:60])
    release.set()
    reaped, refused = await asyncio.wait_for(asyncio.gather(reaping, late), 30)
    assert [str(run["id"]) for run in reaped] == [run_id]
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["details"]["current_status"] == "failed"
    [log] = (await client.get(f"/api/v1/runs/{run_id}", headers=developer.headers)).json()[
        "step_logs"
    ]
    assert log["status"] == "failed" and log["started_at"] <= log["finished_at"]


async def test_idempotency_replay_compares_json_not_python_equality(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    path = f"/api/v1/workflows/{workflow['id']}/runs"
    headers = {**developer.headers, "Idempotency-Key": "typed"}
    first = await client.post(path, json={"inputs": {"a": 1}}, headers=headers)
    assert first.status_code == 201
    other_type = await client.post(path, json={"inputs": {"a": True}}, headers=headers)
    assert other_type.status_code == 409
    same = await client.post(path, json={"inputs": {"a": 1}}, headers=headers)
    assert (same.status_code, same.json()["id"]) == (200, first.json()["id"])
