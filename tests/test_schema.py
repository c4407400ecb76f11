"""The schema through the Piccolo Table classes: CRUD, defaults, cascades, triggers."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import uuid
from typing import Any

import asyncpg
import pytest

from flowforge.db.engine import DB
from flowforge.db.tables import (
    TABLES,
    ApiKey,
    Outbox,
    RunStatus,
    RunStepLog,
    User,
    Workflow,
    WorkflowRun,
    WorkflowStep,
)

pytestmark = pytest.mark.usefixtures("db")

NOW = datetime.datetime.now(datetime.UTC)
# ON DELETE RESTRICT reports SQLSTATE 23503 up to PostgreSQL 17 and 23001 from 18.
RESTRICT_VIOLATION = (asyncpg.ForeignKeyViolationError, asyncpg.RestrictViolationError)


async def insert(table: Any, **values: Any) -> dict[str, Any]:
    rows = await table.insert(table(**values)).returning(*table.all_columns()).run()
    return dict(rows[0])


async def make_user(email: str = "ada@example.com", role: str = "developer") -> dict[str, Any]:
    return await insert(User, email=email, display_name="Ada", role=role)


async def make_workflow(owner_id: uuid.UUID, name: str = "wf") -> dict[str, Any]:
    return await insert(Workflow, owner_id=owner_id, name=name, trigger_config={"a": 1})


async def make_run(workflow_id: uuid.UUID, **values: Any) -> dict[str, Any]:
    return await insert(WorkflowRun, workflow_id=workflow_id, **values)


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# High-volume tables: keys in insert order (benchmarks/uuid_keys.py, docs/decisions/10-uuidv7-keys.md).
TIME_ORDERED_KEYS = {"workflow_runs", "run_step_logs", "run_history", "outbox"}
# Append-only: a row is never updated, so it has no updated_at (nor its trigger),
# and its moment is recorded_at (docs/decisions/14-run-history.md).
APPEND_ONLY = {"run_history"}


# Immutable: rows are never updated (a trigger refuses it), so no updated_at.
IMMUTABLE_TABLES = {"workflow_versions"}


async def test_every_table_has_database_generated_uuid_and_timestamps() -> None:
    for table in TABLES:
        name = table._meta.tablename
        rows = await DB.fetch(
            """
            SELECT column_name, data_type, column_default, is_nullable
            FROM information_schema.columns
            WHERE table_name = $1 AND column_name IN ('id', 'created_at', 'updated_at')
            ORDER BY column_name
            """,
            name,
        )
        columns = {row["column_name"]: row for row in rows}
        assert columns["id"]["data_type"] == "uuid", name
        expected = "uuidv7()" if name in TIME_ORDERED_KEYS else "gen_random_uuid()"
        assert columns["id"]["column_default"] == expected, name
        if name in APPEND_ONLY:
            assert set(columns) == {"id"}, name
            continue
        for column in ("created_at",) if name in IMMUTABLE_TABLES else ("created_at", "updated_at"):
            assert columns[column]["data_type"] == "timestamp with time zone", name
            assert columns[column]["column_default"] == "CURRENT_TIMESTAMP", name
            assert columns[column]["is_nullable"] == "NO", name


async def test_raw_sql_insert_gets_id_and_timestamps_from_the_database() -> None:
    row = (
        await DB.fetch(
            "INSERT INTO users (email, display_name) VALUES ('raw@example.com', 'Raw') "
            "RETURNING id, created_at, updated_at, role, is_active"
        )
    )[0]
    assert isinstance(row["id"], uuid.UUID)
    assert row["created_at"] == row["updated_at"]
    assert row["role"] == "developer"
    assert row["is_active"] is True


async def test_updated_at_is_maintained_by_the_database_even_for_raw_sql() -> None:
    user = await make_user()
    await asyncio.sleep(0.01)
    await DB.fetch("UPDATE users SET display_name = 'Ada L.' WHERE id = $1", user["id"])
    after = (await DB.fetch("SELECT created_at, updated_at FROM users WHERE id = $1", user["id"]))[
        0
    ]
    assert after["created_at"] == user["created_at"]
    assert after["updated_at"] > user["updated_at"]


async def test_updated_at_is_not_bumped_by_an_update_that_changes_nothing() -> None:
    user = await make_user()
    await asyncio.sleep(0.01)
    await DB.fetch("UPDATE users SET display_name = display_name WHERE id = $1", user["id"])
    after = (await DB.fetch("SELECT updated_at FROM users WHERE id = $1", user["id"]))[0]
    assert after["updated_at"] == user["updated_at"]


async def test_every_table_has_the_updated_at_trigger() -> None:
    rows = await DB.fetch(
        "SELECT event_object_table FROM information_schema.triggers "
        "WHERE trigger_name LIKE '%_set_updated_at' AND event_manipulation = 'UPDATE'"
    )
    # Time partitions (issue 11) carry the trigger too: cloned from their table,
    # including the ones the maintenance command creates later.
    partitions = await DB.fetch(
        "SELECT inhrelid::regclass::text AS name FROM pg_inherits "
        "WHERE inhparent IN ('outbox'::regclass, 'run_step_logs'::regclass)"
    )
    assert {row["event_object_table"] for row in rows} == {
        *(
            t._meta.tablename
            for t in TABLES
            if t._meta.tablename not in APPEND_ONLY | IMMUTABLE_TABLES
        ),
        *(row["name"] for row in partitions),
    }


async def test_user_crud() -> None:
    user = await make_user()
    fetched = await User.select().where(User.id == user["id"]).first().run()
    assert fetched is not None
    assert fetched["email"] == "ada@example.com"
    await User.update({User.role: "admin", User.is_active: False}).where(User.id == user["id"])
    updated = await User.select(User.role, User.is_active).where(User.id == user["id"]).first()
    assert updated == {"role": "admin", "is_active": False}
    await User.delete().where(User.id == user["id"])
    assert await User.count() == 0


async def test_api_key_crud_and_scopes() -> None:
    user = await make_user()
    key = await insert(
        ApiKey,
        user_id=user["id"],
        name="ci",
        prefix="ff_abc123",
        key_hash=key_hash("secret"),
        scopes=["read", "write"],
        expires_at=NOW + datetime.timedelta(days=30),
    )
    assert key["scopes"] == ["read", "write"]
    assert key["revoked_at"] is None and key["last_used_at"] is None
    await ApiKey.update({ApiKey.revoked_at: NOW, ApiKey.last_used_at: NOW}).where(
        ApiKey.id == key["id"]
    )
    row = await ApiKey.select(ApiKey.revoked_at).where(ApiKey.id == key["id"]).first()
    assert row is not None and row["revoked_at"] is not None
    await ApiKey.delete().where(ApiKey.id == key["id"])
    assert await ApiKey.count() == 0


async def test_workflow_and_step_crud_with_jsonb() -> None:
    user = await make_user()
    workflow = await make_workflow(user["id"])
    step = await insert(
        WorkflowStep,
        workflow_id=workflow["id"],
        position=0,
        name="fetch",
        action_type="http.request",
        config={"url": "https://example.com"},
        retry_policy={"max_attempts": 3},
    )
    loaded = (
        await WorkflowStep.select()
        .where(WorkflowStep.id == step["id"])
        .output(load_json=True)
        .first()
    )
    assert loaded is not None
    assert loaded["config"] == {"url": "https://example.com"}
    assert loaded["retry_policy"] == {"max_attempts": 3}
    await Workflow.update({Workflow.name: "renamed", Workflow.is_active: False}).where(
        Workflow.id == workflow["id"]
    )
    row = await Workflow.select(Workflow.name).where(Workflow.id == workflow["id"]).first()
    assert row == {"name": "renamed"}
    # Steps are immutable (issue 17): they go only with their workflow.
    await Workflow.delete().where(Workflow.id == workflow["id"])
    assert await Workflow.count() == 0 and await WorkflowStep.count() == 0


async def test_run_and_step_log_crud() -> None:
    user = await make_user()
    workflow = await make_workflow(user["id"])
    step = await insert(
        WorkflowStep, workflow_id=workflow["id"], position=0, name="s", action_type="noop"
    )
    run = await make_run(workflow["id"], inputs={"x": 1}, triggered_by_user_id=user["id"])
    assert run["status"] == "pending"
    await WorkflowRun.update({WorkflowRun.status: "running", WorkflowRun.started_at: NOW}).where(
        WorkflowRun.id == run["id"]
    )
    log = await insert(
        RunStepLog,
        run_id=run["id"],
        run_created_at=run["created_at"],
        step_id=step["id"],
        step_position=0,
        step_name="s",
        attempt=1,
        status="running",
        started_at=NOW,
    )
    await RunStepLog.update(
        {RunStepLog.status: "completed", RunStepLog.finished_at: NOW, RunStepLog.output: {"y": 2}}
    ).where(RunStepLog.id == log["id"])
    row = (
        await RunStepLog.select(RunStepLog.status, RunStepLog.output)
        .where(RunStepLog.id == log["id"])
        .output(load_json=True)
        .first()
    )
    assert row == {"status": "completed", "output": {"y": 2}}
    await RunStepLog.delete().where(RunStepLog.id == log["id"])
    await WorkflowRun.delete().where(WorkflowRun.id == run["id"])
    assert await WorkflowRun.count() == 0


async def test_time_ordered_keys_are_uuidv7_in_insert_order() -> None:
    """The database's uuidv7() (built in on 18, the migration's function on 15)."""
    rows = await DB.fetch(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) "
        "SELECT 'workflow', gen_random_uuid(), 'workflow.created', '{}' "
        "FROM generate_series(1, 500) RETURNING id, seq"
    )
    ids = [row["id"] for row in sorted(rows, key=lambda row: row["seq"])]
    assert {key.version for key in ids} == {7}
    assert {key.variant for key in ids} == {uuid.RFC_4122}
    assert ids == sorted(ids)  # one session's keys arrive in index order
    created = (ids[0].int >> 80) / 1000  # the key's Unix time in ms
    assert abs(created - datetime.datetime.now(datetime.UTC).timestamp()) < 60


def test_python_side_uuid7_matches_the_layout() -> None:
    from flowforge.db.uuid7 import UUID7

    keys = [UUID7().python() for _ in range(100)]
    assert {key.version for key in keys} == {7}
    assert keys == sorted(keys)


async def test_outbox_crud() -> None:
    event = await insert(
        Outbox,
        aggregate_type="workflow",
        aggregate_id=uuid.uuid4(),
        event_type="workflow.created",
        payload={"k": "v"},
    )
    assert event["published_at"] is None
    await Outbox.update({Outbox.published_at: NOW}).where(Outbox.id == event["id"])
    assert await Outbox.count().where(Outbox.published_at.is_null()) == 0
    await Outbox.delete().where(Outbox.id == event["id"])
    assert await Outbox.count() == 0


async def test_deleting_a_user_deletes_their_api_keys() -> None:
    user = await make_user()
    other = await make_user("other@example.com")
    for index, owner in enumerate([user, user, other]):
        await insert(
            ApiKey,
            user_id=owner["id"],
            name=f"k{index}",
            prefix=f"ff_p{index}",
            key_hash=key_hash(str(index)),
        )
    await User.delete().where(User.id == user["id"])
    remaining = await ApiKey.select(ApiKey.user_id).run()
    assert remaining == [{"user_id": other["id"]}]


async def test_deleting_a_user_deletes_the_keys_their_keys_granted_to_others() -> None:
    """A key never outlives the key that granted it: deleting one deletes its grants."""
    admin = await make_user(role="admin")
    other = await make_user("other@example.com")
    granter = await insert(
        ApiKey, user_id=admin["id"], name="a", prefix="ff_pa", key_hash=key_hash("a")
    )
    granted = await insert(
        ApiKey,
        user_id=other["id"],
        name="b",
        prefix="ff_pb",
        key_hash=key_hash("b"),
        granted_by_key_id=granter["id"],
    )
    await insert(
        ApiKey,
        user_id=other["id"],
        name="c",
        prefix="ff_pc",
        key_hash=key_hash("c"),
        granted_by_key_id=granted["id"],
    )
    await insert(ApiKey, user_id=other["id"], name="d", prefix="ff_pd", key_hash=key_hash("d"))
    await User.delete().where(User.id == admin["id"])
    assert await ApiKey.select(ApiKey.name).run() == [{"name": "d"}]


async def test_a_user_who_owns_workflows_cannot_be_deleted() -> None:
    user = await make_user()
    await make_workflow(user["id"])
    with pytest.raises(RESTRICT_VIOLATION) as caught:
        await User.delete().where(User.id == user["id"])
    assert caught.value.constraint_name == "workflows_owner_id_fkey"


async def test_deleting_a_workflow_deletes_its_steps_but_not_its_run_history() -> None:
    user = await make_user()
    workflow = await make_workflow(user["id"])
    await insert(WorkflowStep, workflow_id=workflow["id"], position=0, name="s", action_type="a")
    await make_run(workflow["id"])
    with pytest.raises(RESTRICT_VIOLATION) as caught:
        await Workflow.delete().where(Workflow.id == workflow["id"])
    assert caught.value.constraint_name == "workflow_runs_workflow_id_fkey"
    await WorkflowRun.delete().where(WorkflowRun.workflow_id == workflow["id"])
    await Workflow.delete().where(Workflow.id == workflow["id"])
    assert await WorkflowStep.count() == 0


async def test_deleting_a_run_deletes_its_step_logs() -> None:
    user = await make_user()
    workflow = await make_workflow(user["id"])
    run = await make_run(workflow["id"], status="running", started_at=NOW)
    await insert(
        RunStepLog,
        run_id=run["id"],
        run_created_at=run["created_at"],
        step_position=0,
        step_name="s",
        attempt=1,
    )
    await WorkflowRun.delete().where(WorkflowRun.id == run["id"])
    assert await RunStepLog.count() == 0


async def test_steps_cannot_be_deleted_so_step_logs_keep_their_step() -> None:
    """Issue 17: a new definition is a new version; the old steps stay for the runs on them."""
    user = await make_user()
    workflow = await make_workflow(user["id"])
    step = await insert(
        WorkflowStep, workflow_id=workflow["id"], position=0, name="old", action_type="a"
    )
    run = await make_run(workflow["id"], status="running", started_at=NOW)
    await insert(
        RunStepLog,
        run_id=run["id"],
        run_created_at=run["created_at"],
        step_id=step["id"],
        step_position=0,
        step_name="old",
    )
    with pytest.raises(asyncpg.IntegrityConstraintViolationError) as caught:
        await WorkflowStep.delete().where(WorkflowStep.workflow_id == workflow["id"])
    assert caught.value.constraint_name == "workflow_steps_immutable"
    logs = await RunStepLog.select(RunStepLog.step_id, RunStepLog.step_name).run()
    assert logs == [{"step_id": step["id"], "step_name": "old"}]


async def test_deleting_a_user_keeps_runs_they_triggered() -> None:
    owner = await make_user()
    trigger = await make_user("trigger@example.com")
    workflow = await make_workflow(owner["id"])
    run = await make_run(workflow["id"], triggered_by_user_id=trigger["id"])
    await User.delete().where(User.id == trigger["id"])
    row = await WorkflowRun.select(WorkflowRun.triggered_by_user_id).where(
        WorkflowRun.id == run["id"]
    )
    assert row == [{"triggered_by_user_id": None}]


async def test_email_is_unique_case_insensitively() -> None:
    await make_user("Ada@Example.com")
    with pytest.raises(asyncpg.UniqueViolationError) as caught:
        await make_user("ada@EXAMPLE.COM")
    assert caught.value.constraint_name == "users_email_lower_key"


@pytest.mark.parametrize(
    ("status", "started", "finished", "error", "ok"),
    [
        ("pending", False, False, None, True),
        ("pending", True, False, None, False),
        ("running", True, False, None, True),
        ("running", False, False, None, False),
        ("running", True, True, None, False),
        ("completed", True, True, None, True),
        ("completed", True, False, None, False),
        ("failed", True, True, "boom", True),
        ("failed", True, True, None, False),
        ("cancelled", False, True, None, True),
        ("cancelled", True, True, None, True),
        ("cancelled", False, False, None, False),
    ],
)
async def test_run_timestamps_and_error_must_match_status(
    status: str, started: bool, finished: bool, error: str | None, ok: bool
) -> None:
    user = await make_user()
    workflow = await make_workflow(user["id"])
    values: dict[str, Any] = {
        "status": status,
        "started_at": NOW if started else None,
        "finished_at": NOW + datetime.timedelta(seconds=1) if finished else None,
        "error": error,
    }
    if ok:
        run = await make_run(workflow["id"], **values)
        assert run["status"] == status
    else:
        with pytest.raises(asyncpg.CheckViolationError):
            await make_run(workflow["id"], **values)


async def test_finished_before_started_is_rejected() -> None:
    user = await make_user()
    workflow = await make_workflow(user["id"])
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await make_run(
            workflow["id"],
            status="completed",
            started_at=NOW,
            finished_at=NOW - datetime.timedelta(seconds=1),
        )
    assert caught.value.constraint_name == "workflow_runs_timestamps_match_status"


async def test_every_status_value_is_accepted_by_the_database() -> None:
    """The Python enums and the CHECK constraints list the same values."""
    user = await make_user()
    workflow = await make_workflow(user["id"])
    for status in RunStatus:
        ended = status in {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED}
        finished = NOW if ended else None
        started = NOW if status is not RunStatus.PENDING else None
        await make_run(
            workflow["id"],
            status=status.value,
            started_at=started,
            finished_at=finished,
            error="e" if status is RunStatus.FAILED else None,
            next_attempt_at=NOW if status is RunStatus.AWAITING_RETRY else None,
        )
    assert await WorkflowRun.count() == len(RunStatus)
