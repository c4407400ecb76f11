"""Workflows over HTTP: create with steps, list, get, update, replace steps, (de)activate, delete."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.conftest import (
    WORKFLOW_BODY,
    Caller,
    count,
    create_workflow,
    events,
    if_match,
    trigger,
)


async def test_create_returns_the_workflow_with_ordered_steps_and_an_event(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    workflow = await create_workflow(client, developer)
    assert workflow["owner_id"] == str(developer.user_id)
    assert workflow["trigger_type"] == "schedule"
    assert workflow["trigger_config"] == {"cron": "0 2 * * *"}
    assert workflow["is_active"] is True
    assert workflow["step_count"] == 3
    assert [(s["position"], s["name"]) for s in workflow["steps"]] == [
        (0, "Query"),
        (1, "Render"),
        (2, "Email"),
    ]
    assert workflow["steps"][2]["retry_policy"] == {"max_attempts": 3}
    [event] = await events(workflow["id"])
    assert event["event_type"] == "workflow.created"
    assert event["payload"]["step_count"] == 3


async def test_explicit_positions_are_kept_and_steps_come_back_in_order(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    steps = [
        {"position": 20, "name": "Last", "action_type": "x"},
        {"position": 5, "name": "First", "action_type": "x"},
    ]
    workflow = await create_workflow(client, developer, steps=steps)
    assert [(s["position"], s["name"]) for s in workflow["steps"]] == [(5, "First"), (20, "Last")]


@pytest.mark.parametrize(
    ("change", "location"),
    [
        ({"name": ""}, "body.name"),
        ({"name": "   "}, "body.name"),
        ({"name": "x" * 201}, "body.name"),
        ({"name": "a\x00b"}, "body.name"),
        ({"trigger_type": "sometimes"}, "body.trigger_type"),
        ({"trigger_config": []}, "body.trigger_config"),
        ({"trigger_config": {"k": "\x00"}}, "body.trigger_config"),
        ({"trigger_config": {"k": "x" * 70_000}}, "body.trigger_config"),
        ({"unexpected": True}, "body.unexpected"),
        ({"steps": [{"name": "a", "action_type": "b", "position": -1}]}, "body.steps.0.position"),
        (
            {
                "steps": [
                    {"name": "a", "action_type": "b", "position": 1},
                    {"name": "c", "action_type": "d", "position": 1},
                ]
            },
            "body",
        ),
        (
            {
                "steps": [
                    {"name": "a", "action_type": "b", "position": 1},
                    {"name": "c", "action_type": "d"},
                ]
            },
            "body",
        ),
        ({"steps": [{"name": "a"}]}, "body.steps.0.action_type"),
        ({"steps": [{"name": "a", "action_type": "b", "x": 1}]}, "body.steps.0.x"),
        ({"steps": [{"name": "a", "action_type": "b"}] * 101}, "body.steps"),
        ({"owner_id": "not-a-uuid"}, "body.owner_id"),
    ],
)
async def test_bad_workflow_bodies_are_422_naming_the_field_and_write_nothing(
    client: httpx.AsyncClient, developer: Caller, change: dict[str, Any], location: str
) -> None:
    events_before = await count("outbox")
    response = await client.post(
        "/api/v1/workflows", json={**WORKFLOW_BODY, **change}, headers=developer.headers
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert any(p["location"].startswith(location) for p in error["details"]["problems"]), error
    assert await count("workflows") == 0
    assert await count("outbox") == events_before


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b"[]", b'{"name": "\\ud800", "steps": []}', b"null"],
)
async def test_malformed_json_is_a_4xx(
    client: httpx.AsyncClient, developer: Caller, content: bytes
) -> None:
    response = await client.post(
        "/api/v1/workflows",
        content=content,
        headers={**developer.headers, "Content-Type": "application/json"},
    )
    assert 400 <= response.status_code < 500, response.text
    assert "error" in response.json()
    assert await count("workflows") == 0


async def test_an_oversized_body_is_a_413(client: httpx.AsyncClient, developer: Caller) -> None:
    response = await client.post(
        "/api/v1/workflows",
        content=b'{"name": "' + b"x" * 2_000_000 + b'"}',
        headers={**developer.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


async def test_list_is_own_workflows_newest_first_and_admins_see_all(
    client: httpx.AsyncClient, developer: Caller, other_developer: Caller, admin: Caller
) -> None:
    mine = [await create_workflow(client, developer, name=f"mine {i}") for i in range(3)]
    theirs = await create_workflow(client, other_developer, name="theirs")
    response = await client.get("/api/v1/workflows", headers=developer.headers)
    assert response.status_code == 200
    assert [w["id"] for w in response.json()["items"]] == [w["id"] for w in reversed(mine)]
    assert response.json()["items"][0]["step_count"] == 3
    everything = await client.get("/api/v1/workflows", headers=admin.headers)
    assert {w["id"] for w in everything.json()["items"]} == {w["id"] for w in [*mine, theirs]}
    only_theirs = await client.get(
        "/api/v1/workflows",
        params={"owner_id": str(other_developer.user_id)},
        headers=admin.headers,
    )
    assert [w["id"] for w in only_theirs.json()["items"]] == [theirs["id"]]
    snooping = await client.get(
        "/api/v1/workflows",
        params={"owner_id": str(other_developer.user_id)},
        headers=developer.headers,
    )
    assert snooping.status_code == 403


async def test_list_pages_and_filters_by_active(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    made = [await create_workflow(client, developer, name=f"w{i}") for i in range(5)]
    await client.post(f"/api/v1/workflows/{made[0]['id']}/deactivate", headers=developer.headers)
    first = await client.get("/api/v1/workflows", params={"limit": 2}, headers=developer.headers)
    second = await client.get(
        "/api/v1/workflows",
        params={"limit": 2, "cursor": first.json()["next_cursor"]},
        headers=developer.headers,
    )
    ids = [w["id"] for w in first.json()["items"] + second.json()["items"]]
    assert ids == [w["id"] for w in reversed(made)][:4]
    inactive = await client.get(
        "/api/v1/workflows", params={"is_active": "false"}, headers=developer.headers
    )
    assert [w["id"] for w in inactive.json()["items"]] == [made[0]["id"]]
    bad = await client.get(
        "/api/v1/workflows", params={"cursor": "AAAA"}, headers=developer.headers
    )
    assert bad.status_code == 422


async def test_get_own_and_not_others(
    client: httpx.AsyncClient, developer: Caller, other_developer: Caller, admin: Caller
) -> None:
    workflow = await create_workflow(client, developer)
    path = f"/api/v1/workflows/{workflow['id']}"
    assert (await client.get(path, headers=developer.headers)).json() == workflow
    assert (await client.get(path, headers=admin.headers)).status_code == 200
    hidden = await client.get(path, headers=other_developer.headers)
    assert hidden.status_code == 404
    assert hidden.json()["error"]["code"] == "not_found"
    assert (
        await client.get("/api/v1/workflows/nope", headers=developer.headers)
    ).status_code == 422


async def test_update_changes_only_the_fields_sent(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    workflow = await create_workflow(client, developer)
    response = await client.patch(
        f"/api/v1/workflows/{workflow['id']}",
        json={"name": "Renamed", "trigger_type": "webhook", "trigger_config": {"path": "/h"}},
        headers=if_match(developer, workflow),
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["name"], body["trigger_type"], body["trigger_config"]) == (
        "Renamed",
        "webhook",
        {"path": "/h"},
    )
    assert body["description"] == workflow["description"]
    # A trigger change is a new version with the same steps (new rows of version 2).
    assert (body["version"], body["revision"]) == (2, 2)
    assert response.headers["ETag"] == '"2"'
    same_steps = ("position", "name", "action_type", "config", "retry_policy")
    assert [{k: s[k] for k in same_steps} for s in body["steps"]] == [
        {k: s[k] for k in same_steps} for s in workflow["steps"]
    ]
    assert {s["version"] for s in body["steps"]} == {2}
    assert body["updated_at"] > workflow["updated_at"]
    updated = (await events(workflow["id"]))[-1]
    assert updated["event_type"] == "workflow.updated"
    assert updated["payload"]["changes"] == {
        "name": "Renamed",
        "trigger_type": "webhook",
        "trigger_config": {"path": "/h"},
    }
    # Nothing changed: no event.
    before = await count("outbox")
    same = await client.patch(
        f"/api/v1/workflows/{workflow['id']}",
        json={"name": "Renamed"},
        headers=if_match(developer, body),
    )
    assert same.status_code == 200
    assert await count("outbox") == before
    assert same.json()["revision"] == 2


async def test_update_rejects_bad_fields_and_foreign_workflows(
    client: httpx.AsyncClient, developer: Caller, other_developer: Caller
) -> None:
    workflow = await create_workflow(client, developer)
    path = f"/api/v1/workflows/{workflow['id']}"
    for body in ({"owner_id": str(other_developer.user_id)}, {"steps": []}, {"name": ""}):
        assert (await client.patch(path, json=body, headers=developer.headers)).status_code == 422
    foreign = await client.patch(
        path, json={"name": "mine now"}, headers=if_match(other_developer, workflow)
    )
    assert foreign.status_code == 404


async def test_deactivate_and_activate(client: httpx.AsyncClient, developer: Caller) -> None:
    workflow = await create_workflow(client, developer)
    off = await client.post(
        f"/api/v1/workflows/{workflow['id']}/deactivate", headers=developer.headers
    )
    assert off.json()["is_active"] is False
    on = await client.post(
        f"/api/v1/workflows/{workflow['id']}/activate", headers=developer.headers
    )
    assert on.json()["is_active"] is True
    kinds = [e["event_type"] for e in await events(workflow["id"])]
    assert kinds == ["workflow.created", "workflow.deactivated", "workflow.activated"]


async def test_replace_steps_atomically(client: httpx.AsyncClient, developer: Caller) -> None:
    workflow = await create_workflow(client, developer)
    path = f"/api/v1/workflows/{workflow['id']}/steps"
    new_steps = {"steps": [{"name": "A", "action_type": "x"}, {"name": "B", "action_type": "y"}]}
    response = await client.put(path, json=new_steps, headers=if_match(developer, workflow))
    assert response.status_code == 200
    assert [(s["position"], s["name"]) for s in response.json()["steps"]] == [(0, "A"), (1, "B")]
    replaced, created = (await events(workflow["id"]))[-2:]
    assert replaced["event_type"] == "workflow.steps_replaced"
    assert [s["name"] for s in replaced["payload"]["steps"]] == ["A", "B"]
    assert created["event_type"] == "workflow.version_created"
    assert created["payload"] == {
        "workflow_id": workflow["id"],
        "owner_id": str(developer.user_id),
        "version": 2,
        "trigger_type": "schedule",
        "step_count": 2,
        "created_by_user_id": str(developer.user_id),
    }
    # A bad list changes nothing.
    bad = {
        "steps": [
            {"name": "C", "action_type": "x", "position": 0},
            {"name": "D", "action_type": "x", "position": 0},
        ]
    }
    assert (
        await client.put(path, json=bad, headers=if_match(developer, response.json()))
    ).status_code == 422
    current = await client.get(f"/api/v1/workflows/{workflow['id']}", headers=developer.headers)
    assert [s["name"] for s in current.json()["steps"]] == ["A", "B"]
    # An empty list is allowed.
    empty = await client.put(path, json={"steps": []}, headers=if_match(developer, current.json()))
    assert (empty.status_code, empty.json()["steps"]) == (200, [])
    missing = await client.put(
        "/api/v1/workflows/00000000-0000-0000-0000-000000000000/steps",
        json=new_steps,
        headers={**developer.headers, "If-Match": "*"},
    )
    assert missing.status_code == 404


async def test_delete_a_workflow_without_runs(client: httpx.AsyncClient, developer: Caller) -> None:
    workflow = await create_workflow(client, developer)
    response = await client.delete(f"/api/v1/workflows/{workflow['id']}", headers=developer.headers)
    assert response.status_code == 204
    assert await count("workflows") == 0
    assert await count("workflow_steps") == 0
    assert (await events(workflow["id"]))[-1]["event_type"] == "workflow.deleted"
    again = await client.delete(f"/api/v1/workflows/{workflow['id']}", headers=developer.headers)
    assert again.status_code == 404


async def test_a_workflow_with_runs_cannot_be_deleted(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    workflow = await create_workflow(client, developer)
    await trigger(client, developer, workflow["id"])
    response = await client.delete(f"/api/v1/workflows/{workflow['id']}", headers=developer.headers)
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "conflict"
    assert "deactivate it instead" in error["message"]
    assert await count("workflows") == 1
    assert [e["event_type"] for e in await events(workflow["id"])] == ["workflow.created"]


async def test_admin_creates_a_workflow_for_another_user_and_others_cannot(
    client: httpx.AsyncClient, admin: Caller, developer: Caller, other_developer: Caller
) -> None:
    made = await create_workflow(client, admin, owner_id=str(developer.user_id))
    assert made["owner_id"] == str(developer.user_id)
    denied = await client.post(
        "/api/v1/workflows",
        json={**WORKFLOW_BODY, "owner_id": str(developer.user_id)},
        headers=other_developer.headers,
    )
    assert denied.status_code == 403
    unknown_owner = await client.post(
        "/api/v1/workflows",
        json={**WORKFLOW_BODY, "owner_id": "00000000-0000-0000-0000-000000000000"},
        headers=admin.headers,
    )
    assert unknown_owner.status_code == 409
    assert "owner does not exist" in unknown_owner.json()["error"]["message"]
