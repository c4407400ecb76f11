"""Domain events are written in the transaction of the change they describe."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from flowforge.core.errors import ConflictError, NotFoundError, translated_db_errors
from flowforge.core.json import loads
from flowforge.db.engine import DB
from flowforge.domain.workflows import StepSpec, WorkflowSpec, create_workflow, delete_workflow
from flowforge.outbox.writer import record_event

pytestmark = pytest.mark.usefixtures("db")


class Boom(Exception):
    pass


async def make_owner() -> uuid.UUID:
    rows = await DB.fetch(
        "INSERT INTO users (email, display_name) VALUES ('o@example.com', 'O') RETURNING id"
    )
    return rows[0]["id"]  # type: ignore[no-any-return]


async def counts_seen_by_another_connection(database_url: str) -> tuple[int, int, int]:
    """What a different session sees: only committed data."""
    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow(
            "SELECT (SELECT count(*) FROM workflows) AS w, (SELECT count(*) FROM workflow_steps) "
            "AS s, (SELECT count(*) FROM outbox) AS e"
        )
    finally:
        await connection.close()
    assert row is not None
    return row["w"], row["s"], row["e"]


SPEC_STEPS = [StepSpec(1, "second", "b", {"n": 2}), StepSpec(0, "first", "a", {"n": 1})]


async def test_workflow_create_commits_with_its_event(database_url: str) -> None:
    owner = await make_owner()
    async with DB.transaction():
        workflow = await create_workflow(WorkflowSpec(owner, "wf", steps=SPEC_STEPS))
        # Inside the transaction, another session sees nothing yet.
        assert await counts_seen_by_another_connection(database_url) == (0, 0, 0)
    assert await counts_seen_by_another_connection(database_url) == (1, 2, 1)
    assert [step["position"] for step in workflow["steps"]] == [0, 1]
    assert workflow["steps"][0]["config"] == {"n": 1}
    event = (await DB.fetch("SELECT * FROM outbox"))[0]
    assert event["aggregate_type"] == "workflow"
    assert event["aggregate_id"] == workflow["id"]
    assert event["event_type"] == "workflow.created"
    assert event["published_at"] is None
    assert loads(event["payload"]) == {
        "workflow_id": str(workflow["id"]),
        "owner_id": str(owner),
        "name": "wf",
        "trigger_type": "manual",
        "step_count": 2,
    }


async def test_workflow_create_rolls_back_with_its_event(database_url: str) -> None:
    owner = await make_owner()

    async def create_then_fail() -> None:
        async with DB.transaction():
            await create_workflow(WorkflowSpec(owner, "wf", steps=SPEC_STEPS))
            raise Boom

    with pytest.raises(Boom):
        await create_then_fail()
    assert await counts_seen_by_another_connection(database_url) == (0, 0, 0)


async def test_a_failing_step_rolls_back_the_workflow_and_its_event(database_url: str) -> None:
    owner = await make_owner()
    duplicate_positions = [StepSpec(0, "a", "x"), StepSpec(0, "b", "y")]
    with pytest.raises(ConflictError) as caught:
        async with translated_db_errors(), DB.transaction():
            await create_workflow(WorkflowSpec(owner, "wf", steps=duplicate_positions))
    assert caught.value.details["constraint"] == "workflow_steps_workflow_version_position_key"
    assert await counts_seen_by_another_connection(database_url) == (0, 0, 0)


async def test_events_cannot_be_written_outside_a_transaction() -> None:
    with pytest.raises(RuntimeError, match=r"inside DB\.transaction"):
        await record_event("workflow", uuid.uuid4(), "workflow.created", {})
    assert (await DB.fetch("SELECT count(*) AS n FROM outbox"))[0]["n"] == 0


async def test_delete_workflow_emits_event_and_reports_missing() -> None:
    owner = await make_owner()
    async with DB.transaction():
        workflow = await create_workflow(WorkflowSpec(owner, "wf", steps=SPEC_STEPS))
    async with DB.transaction():
        await delete_workflow(workflow["id"])
    events = await DB.fetch("SELECT event_type FROM outbox ORDER BY created_at, event_type")
    assert [row["event_type"] for row in events] == ["workflow.created", "workflow.deleted"]
    with pytest.raises(NotFoundError):
        async with DB.transaction():
            await delete_workflow(workflow["id"])


async def test_a_workflow_with_runs_cannot_be_deleted() -> None:
    owner = await make_owner()
    async with DB.transaction():
        workflow = await create_workflow(WorkflowSpec(owner, "wf"))
    await DB.fetch("INSERT INTO workflow_runs (workflow_id) VALUES ($1)", workflow["id"])
    with pytest.raises(ConflictError, match="deactivate it instead"):
        async with translated_db_errors(), DB.transaction():
            await delete_workflow(workflow["id"])
    assert (await DB.fetch("SELECT count(*) AS n FROM outbox"))[0]["n"] == 1
