"""Workflow versions and optimistic concurrency (issue 17): the API over real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest

from flowforge.db.engine import DB
from tests.api.conftest import Caller, count, create_workflow, events, if_match, trigger


@pytest.fixture
async def workflow(client: httpx.AsyncClient, developer: Caller) -> dict[str, Any]:
    return await create_workflow(client, developer)


def url(workflow: dict[str, Any], tail: str = "") -> str:
    return f"/api/v1/workflows/{workflow['id']}{tail}"


NEW_STEPS = {"steps": [{"name": "Only", "action_type": "noop"}]}


async def running_run(client: httpx.AsyncClient, caller: Caller, workflow_id: Any) -> Any:
    run = await trigger(client, caller, workflow_id)
    started = await client.post(f"/api/v1/runs/{run['id']}/start", headers=caller.headers)
    assert started.status_code == 200, started.text
    return run["id"]


# -- ETag / If-Match ----------------------------------------------------------------------


async def test_get_returns_the_revision_as_a_strong_etag(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    assert (workflow["version"], workflow["revision"]) == (1, 1)
    response = await client.get(url(workflow), headers=developer.headers)
    assert response.headers["ETag"] == '"1"'
    renamed = await client.patch(
        url(workflow), json={"name": "Renamed"}, headers=if_match(developer, workflow)
    )
    assert renamed.status_code == 200
    # A rename changes the revision (the ETag) but not the definition version.
    assert (renamed.json()["version"], renamed.json()["revision"]) == (1, 2)
    assert renamed.headers["ETag"] == '"2"'
    assert (await client.get(url(workflow), headers=developer.headers)).headers["ETag"] == '"2"'


async def test_a_change_without_if_match_is_428_and_changes_nothing(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    before = await count("outbox")
    for response in (
        await client.patch(url(workflow), json={"name": "x"}, headers=developer.headers),
        await client.put(url(workflow, "/steps"), json=NEW_STEPS, headers=developer.headers),
    ):
        assert response.status_code == 428
        body = response.json()["error"]
        assert body["code"] == "precondition_required"
        assert "If-Match" in body["message"]
    assert await count("outbox") == before
    assert await count("workflow_versions") == 1


async def test_a_stale_if_match_is_412_naming_the_current_revision(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    first = await client.put(
        url(workflow, "/steps"), json=NEW_STEPS, headers=if_match(developer, workflow)
    )
    assert first.status_code == 200
    for headers in (
        if_match(developer, workflow),  # "1": stale
        {**developer.headers, "If-Match": 'W/"2"'},  # weak: If-Match compares strongly
        {**developer.headers, "If-Match": '"abc"'},
    ):
        stale = await client.patch(url(workflow), json={"name": "Lost"}, headers=headers)
        assert stale.status_code == 412, stale.text
        error = stale.json()["error"]
        assert error["code"] == "precondition_failed"
        assert error["details"]["current_revision"] == 2
        assert error["details"]["current_version"] == 2
        assert '"2"' in error["message"]
    current = (await client.get(url(workflow), headers=developer.headers)).json()
    assert current["name"] == workflow["name"]
    # A list that holds the current ETag matches; so does *.
    listed = await client.patch(
        url(workflow), json={"name": "Kept"}, headers={**developer.headers, "If-Match": '"1", "2"'}
    )
    assert listed.status_code == 200
    star = await client.put(
        url(workflow, "/steps"), json=NEW_STEPS, headers={**developer.headers, "If-Match": "*"}
    )
    assert (star.status_code, star.json()["version"]) == (200, 3)


async def test_a_malformed_if_match_is_422(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    response = await client.patch(
        url(workflow), json={"name": "x"}, headers={**developer.headers, "If-Match": "1"}
    )
    assert response.status_code == 422
    assert "double quotes" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("value", "status"),
    [
        ('"a,b", "1"', 200),  # a comma inside a tag is part of it (RFC 9110 etagc)
        ('W/"1" ,\t"1"', 200),
        ("null", 422),
        ('"1",', 422),
        ('"1" "1"', 422),
    ],
)
async def test_if_match_is_parsed_by_the_pattern_the_openapi_publishes(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any], value: str, status: int
) -> None:
    import re

    from flowforge.api.routes.workflows import IF_MATCH_PATTERN

    published = (await client.get("/openapi.json")).json()["paths"]
    for path, method in [
        ("/api/v1/workflows/{workflow_id}", "patch"),
        ("/api/v1/workflows/{workflow_id}/steps", "put"),
        ("/api/v1/workflows/{workflow_id}/activate", "post"),
    ]:
        [header] = [p for p in published[path][method]["parameters"] if p["in"] == "header"]
        assert (header["name"], header["required"]) == ("if-match", method != "post")
        assert header["schema"]["pattern"] == IF_MATCH_PATTERN
    assert (re.fullmatch(IF_MATCH_PATTERN, value) is not None) == (status == 200)
    response = await client.patch(
        url(workflow), json={"name": "x"}, headers={**developer.headers, "If-Match": value}
    )
    assert response.status_code == status, response.text


async def test_of_concurrent_editors_with_one_etag_exactly_one_wins(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    editors = 12
    headers = if_match(developer, workflow)

    async def put(n: int) -> httpx.Response:
        body = {"steps": [{"name": f"Editor {n}", "action_type": "noop"}]}
        return await client.put(url(workflow, "/steps"), json=body, headers=headers)

    async def patch(n: int) -> httpx.Response:
        return await client.patch(url(workflow), json={"name": f"Editor {n}"}, headers=headers)

    responses = await asyncio.gather(
        *(put(n) for n in range(editors)), *(patch(n) for n in range(editors))
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] + [412] * (2 * editors - 1), statuses
    [winner] = [response.json() for response in responses if response.status_code == 200]
    assert winner["revision"] == 2
    assert await count("workflow_versions") == winner["version"]


# -- versions ------------------------------------------------------------------------------


async def test_versions_are_listed_newest_first_and_keep_their_steps(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    current = workflow
    for n in range(2):
        body = {"steps": [{"name": f"V{n + 2}", "action_type": "noop"}]}
        response = await client.put(
            url(workflow, "/steps"), json=body, headers=if_match(developer, current)
        )
        current = response.json()
    changed = await client.patch(
        url(workflow),
        json={"trigger_config": {"cron": "0 3 * * *"}},
        headers=if_match(developer, current),
    )
    assert changed.json()["version"] == 4
    page = (await client.get(url(workflow, "/versions?limit=3"), headers=developer.headers)).json()
    assert [item["version"] for item in page["items"]] == [4, 3, 2]
    assert page["items"][0]["trigger_config"] == {"cron": "0 3 * * *"}
    assert page["items"][1]["created_by_user_id"] == str(developer.user_id)
    rest = await client.get(
        url(workflow, f"/versions?limit=3&cursor={page['next_cursor']}"), headers=developer.headers
    )
    assert [item["version"] for item in rest.json()["items"]] == [1]
    assert rest.json()["next_cursor"] is None
    first = (await client.get(url(workflow, "/versions/1"), headers=developer.headers)).json()
    assert first["steps"] == [
        {key: step[key] for key in first["steps"][0]} for step in workflow["steps"]
    ]
    assert first["trigger_config"] == {"cron": "0 2 * * *"}
    # Version 4 changed the trigger only: version 3's steps, as new rows.
    fourth = (await client.get(url(workflow, "/versions/4"), headers=developer.headers)).json()
    third = (await client.get(url(workflow, "/versions/3"), headers=developer.headers)).json()
    assert [s["name"] for s in fourth["steps"]] == [s["name"] for s in third["steps"]] == ["V3"]
    assert fourth["steps"][0]["id"] != third["steps"][0]["id"]
    missing = await client.get(url(workflow, "/versions/9"), headers=developer.headers)
    assert missing.status_code == 404
    assert "latest is 4" in missing.json()["error"]["message"]


async def test_versions_of_another_users_workflow_are_not_found(
    client: httpx.AsyncClient, other_developer: Caller, workflow: dict[str, Any]
) -> None:
    for tail in ("/versions", "/versions/1"):
        response = await client.get(url(workflow, tail), headers=other_developer.headers)
        assert response.status_code == 404


async def test_a_trigger_pins_the_latest_version_or_the_one_it_names(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    await client.put(url(workflow, "/steps"), json=NEW_STEPS, headers=if_match(developer, workflow))
    latest = await trigger(client, developer, workflow["id"])
    assert latest["workflow_version"] == 2
    pinned = await trigger(client, developer, workflow["id"], version=1)
    assert pinned["workflow_version"] == 1
    created = [e for e in await events(pinned["id"]) if e["event_type"] == "run.created"]
    assert created[0]["payload"]["workflow_version"] == 1
    unknown = await client.post(
        url(workflow, "/runs"), json={"version": 3}, headers=developer.headers
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == ("The workflow has no version 3; its latest is 2.")
    for bad in (0, -1, 2**31, "1", 1.5):
        response = await client.post(
            url(workflow, "/runs"), json={"version": bad}, headers=developer.headers
        )
        assert response.status_code == 422, bad
    detail = (await client.get(f"/api/v1/runs/{pinned['id']}", headers=developer.headers)).json()
    assert detail["workflow_version"] == 1


async def test_a_run_logs_the_steps_of_its_version(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    run_id = await running_run(client, developer, workflow["id"])
    await client.put(url(workflow, "/steps"), json=NEW_STEPS, headers=if_match(developer, workflow))
    new_run = await running_run(client, developer, workflow["id"])
    old = await client.post(
        f"/api/v1/runs/{run_id}/step-logs", json={"step_position": 2}, headers=developer.headers
    )
    assert old.status_code == 201
    assert old.json()["step_name"] == "Email"
    new = await client.post(
        f"/api/v1/runs/{new_run}/step-logs", json={"step_position": 2}, headers=developer.headers
    )
    assert new.status_code == 404
    assert "Version 2" in new.json()["error"]["message"]


async def test_appends_racing_step_replacements_never_fail(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    """Issue 17: 28 of 160 appends racing a PUT of the steps failed with a foreign-key 409."""
    runs = [await running_run(client, developer, workflow["id"]) for _ in range(8)]

    async def append(run_id: Any, position: int) -> httpx.Response:
        return await client.post(
            f"/api/v1/runs/{run_id}/step-logs",
            json={"step_position": position},
            headers=developer.headers,
        )

    async def replace() -> httpx.Response:
        body = {"steps": [{"name": "A", "action_type": "x"}, {"name": "B", "action_type": "y"}]}
        return await client.put(
            url(workflow, "/steps"), json=body, headers={**developer.headers, "If-Match": "*"}
        )

    attempts = []
    for _round in range(4):
        attempts += await asyncio.gather(
            *(append(run_id, n % 3) for n, run_id in enumerate(runs)),
            replace(),
            *(append(run_id, 1) for run_id in runs),
            replace(),
        )
    appends = [r for r in attempts if r.request.method == "POST"]
    assert len(appends) == 64
    assert [r.status_code for r in appends] == [201] * 64, [r.text for r in appends][:3]
    assert all(r.status_code == 200 for r in attempts if r.request.method == "PUT")
    dangling = await DB.fetch(
        "SELECT count(*) AS n FROM run_step_logs WHERE step_id IS NULL OR step_id NOT IN "
        "(SELECT id FROM workflow_steps WHERE version = 1)"
    )
    assert dangling[0]["n"] == 0


# -- the database keeps versions and steps immutable --------------------------------------


async def test_versions_and_steps_cannot_be_changed_by_raw_sql(
    client: httpx.AsyncClient, developer: Caller, workflow: dict[str, Any]
) -> None:
    for statement, constraint in (
        ("UPDATE workflow_versions SET trigger_config = '{}'", "workflow_versions_immutable"),
        ("UPDATE workflow_steps SET name = 'changed'", "workflow_steps_immutable"),
        ("DELETE FROM workflow_steps", "workflow_steps_immutable"),
    ):
        with pytest.raises(asyncpg.IntegrityConstraintViolationError) as caught:
            await DB.fetch(statement)
        assert caught.value.constraint_name == constraint
    # Deleting a workflow that never ran still takes its versions and steps with it.
    deleted = await client.delete(url(workflow), headers=developer.headers)
    assert deleted.status_code == 204
    assert (await count("workflow_versions"), await count("workflow_steps")) == (0, 0)


async def test_a_workflow_inserted_by_raw_sql_gets_its_version_1(developer: Caller) -> None:
    await DB.fetch(
        "INSERT INTO workflows (owner_id, name, trigger_type, trigger_config) "
        "VALUES ($1, 'raw', 'webhook', '{\"path\": \"/x\"}')",
        developer.user_id,
    )
    [version] = await DB.fetch(
        "SELECT v.version, v.trigger_type, v.trigger_config::text, v.created_by_user_id "
        "FROM workflow_versions v JOIN workflows w ON w.id = v.workflow_id WHERE w.name = 'raw'"
    )
    assert dict(version) == {
        "version": 1,
        "trigger_type": "webhook",
        "trigger_config": '{"path": "/x"}',
        "created_by_user_id": developer.user_id,
    }
