"""Run history (issue 17): one append-only row per state change of a run and of its
step attempts, written by triggers in the statement that makes the change.

Real PostgreSQL; each test starts from emptied tables (the `db` fixture).
"""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

import asyncpg
import pytest

from flowforge.core.errors import ConflictError, translated_db_errors
from flowforge.core.settings import get_settings
from flowforge.db.engine import DB
from flowforge.db.tables import Role, RunStatus
from flowforge.domain import history, runs, users, workflows
from flowforge.jobs import partitions, reaper
from flowforge.jobs.retention import prune
from tests import support

pytestmark = pytest.mark.usefixtures("db")

DAY = datetime.timedelta(days=1)
ACTOR = "cli:test"


async def rows_of(run_id: uuid.UUID) -> list[dict[str, Any]]:
    """The run's history, oldest first, as (position, attempt, from, to, reason, actor)."""
    rows = await DB.fetch(
        "SELECT step_log_id, step_position, attempt, from_status, to_status, reason, actor "
        "FROM run_history WHERE run_id = $1 ORDER BY recorded_at, id",
        run_id,
    )
    return [dict(row) for row in rows]


def shape(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (r["step_position"], r["attempt"], r["from_status"], r["to_status"], r["reason"])
        for r in rows
    ]


async def make_workflow(steps: int = 2) -> dict[str, Any]:
    async with DB.transaction():
        owner = await users.create_user(
            f"{uuid.uuid4().hex[:8]}@example.com", "Owner", Role.DEVELOPER
        )
        spec = workflows.WorkflowSpec(
            owner_id=owner["id"],
            name="Flow",
            steps=[workflows.StepSpec(n, f"step {n}", "http.request") for n in range(steps)],
        )
        return dict(await workflows.create_workflow(spec))


async def outbox_step_events(run_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await DB.fetch(
        "SELECT payload FROM outbox WHERE aggregate_id = $1 AND event_type = 'run.step_logged' "
        "ORDER BY seq",
        run_id,
    )
    return [json.loads(row["payload"]) for row in rows]


async def test_every_transition_of_a_run_and_its_attempts_is_recorded_once() -> None:
    workflow = await make_workflow()
    async with DB.transaction():
        await history.set_actor(ACTOR)
        run, _ = await runs.trigger_run(workflow["id"], inputs={}, idempotency_key=None)
        await runs.transition_run(run["id"], "start")
        first = await runs.append_step_log(run["id"], step_position=0)
        await runs.heartbeat_run(run["id"])  # no status change: no row
        await runs.finish_step_log(run["id"], first["id"], status=RunStatus.FAILED, error="timeout")
        await runs.append_step_log(run["id"], step_position=0)  # attempt 2, left running
        await runs.append_step_log(
            run["id"], step_position=1, status=RunStatus.COMPLETED, output={"ok": 1}
        )
        await runs.transition_run(run["id"], "complete", outputs={"done": True})

    rows = await rows_of(run["id"])
    assert shape(rows) == [
        (None, None, None, "pending", None),
        (None, None, "pending", "running", None),
        (0, 1, None, "running", None),
        (0, 1, "running", "failed", "timeout"),
        (0, 2, None, "running", None),
        (1, 1, None, "completed", None),
        (None, None, "running", "completed", None),
        # Closed by the run's end, in the statement after the transition.
        (0, 2, "running", "cancelled", "run completed"),
    ]
    assert {row["actor"] for row in rows} == {ACTOR}
    assert rows[2]["step_log_id"] == first["id"]


@pytest.mark.parametrize(
    ("action", "arguments", "reason"),
    [
        ("complete", {}, None),
        ("fail", {"error": "boom"}, "boom"),
        ("cancel", {"error": "not needed"}, "not needed"),
    ],
)
async def test_a_run_that_ends_closes_its_attempts_with_history_and_events(
    action: str, arguments: dict[str, Any], reason: str | None
) -> None:
    workflow = await make_workflow()
    async with DB.transaction():
        run, _ = await runs.trigger_run(workflow["id"], inputs={}, idempotency_key=None)
        await runs.transition_run(run["id"], "start")
        open_ = [
            await runs.append_step_log(run["id"], step_position=position) for position in (0, 1)
        ]
    async with DB.transaction():
        await history.set_actor(ACTOR)
        ended = await runs.transition_run(run["id"], action, **arguments)

    status = ended["status"]
    rows = await rows_of(run["id"])
    ends = [row for row in rows if row["actor"] == ACTOR]
    assert shape(ends) == [
        (None, None, "running", status, reason),
        (0, 1, "running", "cancelled", f"run {status}"),
        (1, 1, "running", "cancelled", f"run {status}"),
    ]
    # One run.step_logged per closed attempt, after those of the appends.
    closed = (await outbox_step_events(run["id"]))[2:]
    assert [(e["step_log_id"], e["status"], e["error"]) for e in closed] == [
        (str(log["id"]), "cancelled", f"run {status}") for log in open_
    ]
    assert all(e["workflow_id"] == str(workflow["id"]) for e in closed)
    assert all(e["finished_at"] is not None for e in closed)


async def test_a_cancelled_pending_run_has_nothing_to_close() -> None:
    workflow = await make_workflow()
    async with DB.transaction():
        run, _ = await runs.trigger_run(workflow["id"], inputs={}, idempotency_key=None)
        await runs.transition_run(run["id"], "cancel")
    assert shape(await rows_of(run["id"])) == [
        (None, None, None, "pending", None),
        (None, None, "pending", "cancelled", None),
    ]
    assert await outbox_step_events(run["id"]) == []


async def test_the_reaper_records_its_changes_and_emits_an_event_per_closed_attempt() -> None:
    workflow = await make_workflow(steps=3)
    async with DB.transaction():
        run, _ = await runs.trigger_run(workflow["id"], inputs={}, idempotency_key=None)
        await runs.transition_run(run["id"], "start")
        await runs.append_step_log(run["id"], step_position=0, status=RunStatus.COMPLETED)
        running = await runs.append_step_log(run["id"], step_position=1)
    # A pending attempt (only raw SQL makes one).
    await DB.fetch(
        "INSERT INTO run_step_logs (run_id, run_created_at, step_position, step_name) "
        "SELECT id, created_at, 2, 's' FROM workflow_runs WHERE id = $1",
        run["id"],
    )

    report = await reaper.reap_stuck_runs(lease_seconds=0.0)
    assert report.runs == [run["id"]]

    reaped = [row for row in await rows_of(run["id"]) if row["actor"] == reaper.ACTOR]
    error = (await DB.fetch("SELECT error FROM workflow_runs WHERE id = $1", run["id"]))[0][0]
    assert shape(reaped) == [
        (None, None, "running", "failed", error),
        (1, 1, "running", "failed", reaper.STEP_ERROR),
        (2, 1, "pending", "cancelled", reaper.STEP_ERROR),
    ] or shape(reaped) == [
        (None, None, "running", "failed", error),
        (2, 1, "pending", "cancelled", reaper.STEP_ERROR),
        (1, 1, "running", "failed", reaper.STEP_ERROR),
    ]
    closed = (await outbox_step_events(run["id"]))[2:]
    assert sorted((e["step_position"], e["status"], e["error"]) for e in closed) == [
        (1, "failed", reaper.STEP_ERROR),
        (2, "cancelled", reaper.STEP_ERROR),
    ]
    assert str(running["id"]) in {e["step_log_id"] for e in closed}


async def test_raw_sql_is_recorded_with_the_database_user_as_actor() -> None:
    workflow = await make_workflow()
    async with DB.transaction():
        run, _ = await runs.trigger_run(workflow["id"], inputs={}, idempotency_key=None)
    await DB.fetch(
        "UPDATE workflow_runs SET status = 'cancelled', finished_at = now(), error = 'by hand' "
        "WHERE id = $1",
        run["id"],
    )
    user = (await DB.fetch("SELECT session_user"))[0][0]
    rows = await rows_of(run["id"])
    assert shape(rows[-1:]) == [(None, None, "pending", "cancelled", "by hand")]
    assert {row["actor"] for row in rows} == {f"sql:{user}"}
    # An update that leaves the status alone is no transition.
    await DB.fetch("UPDATE workflow_runs SET error = 'edited' WHERE id = $1", run["id"])
    assert len(await rows_of(run["id"])) == 2


async def test_the_actor_lasts_only_for_its_transaction() -> None:
    workflow = await make_workflow()
    async with DB.transaction():
        await history.set_actor(ACTOR)
        run, _ = await runs.trigger_run(workflow["id"], inputs={}, idempotency_key=None)
    async with DB.transaction():
        await runs.transition_run(run["id"], "start")
    user = (await DB.fetch("SELECT session_user"))[0][0]
    assert [row["actor"] for row in await rows_of(run["id"])] == [ACTOR, f"sql:{user}"]


async def test_history_rows_cannot_be_changed_or_deleted() -> None:
    workflow = await make_workflow()
    async with DB.transaction():
        run, _ = await runs.trigger_run(workflow["id"], inputs={}, idempotency_key=None)
    for statement in (
        "UPDATE run_history SET reason = 'rewritten' WHERE run_id = $1",
        "UPDATE run_history SET to_status = 'completed' WHERE run_id = $1",
        "DELETE FROM run_history WHERE run_id = $1",
    ):
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await DB.fetch(statement, run["id"])
    # Through the one error boundary: a 409 with the rule's message.
    with pytest.raises(ConflictError) as caught:
        async with translated_db_errors():
            await DB.fetch("DELETE FROM run_history WHERE run_id = $1", run["id"])
    assert caught.value.details["constraint"] == "run_history_append_only"
    assert len(await rows_of(run["id"])) == 1
    # They leave with their run.
    await DB.fetch("DELETE FROM workflow_runs WHERE id = $1", run["id"])
    assert await rows_of(run["id"]) == []


async def make_old_run(created: datetime.datetime) -> uuid.UUID:
    """A run created at `created` that went through pending -> running -> completed
    (each change recorded) and finished a day later."""
    workflow = await make_workflow(steps=1)
    run = (
        await DB.fetch(
            "INSERT INTO workflow_runs (workflow_id, created_at) VALUES ($1, $2) RETURNING id",
            workflow["id"],
            created,
        )
    )[0][0]
    await DB.fetch(
        "UPDATE workflow_runs SET status = 'running', started_at = $2 WHERE id = $1",
        run,
        created + datetime.timedelta(seconds=1),
    )
    await DB.fetch(
        "INSERT INTO run_step_logs (run_id, run_created_at, step_position, step_name, status, "
        "started_at, finished_at) VALUES ($1, $2, 0, 's', 'completed', $3, $3)",
        run,
        created,
        created + datetime.timedelta(seconds=2),
    )
    await DB.fetch(
        "UPDATE workflow_runs SET status = 'completed', finished_at = $2 WHERE id = $1",
        run,
        created + DAY,
    )
    return run  # type: ignore[no-any-return]


async def test_retention_prunes_history_with_its_run_by_partition_drop_and_by_delete() -> None:
    now = datetime.datetime.now(datetime.UTC)
    retention = get_settings().run_retention_days
    # Month M: every run finished long ago -> its partitions are dropped whole.
    month = partitions.period_start(now - datetime.timedelta(days=retention + 70), "month")
    dropped_run = await make_old_run(month + DAY)
    # The month after: one run still running -> the partition stays, and the
    # finished run in it is deleted row by row (its history by the cascade).
    next_month = partitions.period_start(month, "month", 1)
    deleted_run = await make_old_run(next_month + DAY)
    kept_run = (
        await DB.fetch(
            "INSERT INTO workflow_runs (workflow_id, created_at) "
            "SELECT workflow_id, $2 FROM workflow_runs WHERE id = $1 RETURNING id",
            deleted_run,
            next_month + 2 * DAY,
        )
    )[0][0]
    await partitions.ensure(partitions.MaintenanceReport())
    history_m = partitions.partition_name(partitions.HISTORY, month)
    history_next = partitions.partition_name(partitions.HISTORY, next_month)
    assert {history_m, history_next} <= await names(partitions.HISTORY)
    for run in (dropped_run, deleted_run):
        assert len(await rows_of(run)) == 4

    report = await prune(get_settings())
    assert report.partition_report is not None
    assert {
        history_m,
        partitions.partition_name(partitions.STEP_LOGS, month),
    } <= set(report.partition_report.dropped)
    assert history_next not in report.partition_report.dropped
    assert report.partition_report.retired_rows["run_history"] == 4
    for run in (dropped_run, deleted_run):
        assert await rows_of(run) == []
    assert len(await rows_of(kept_run)) == 1
    runs_left = {row[0] for row in await DB.fetch("SELECT id FROM workflow_runs")}
    assert runs_left == {kept_run}
    await DB.fetch(f"TRUNCATE {', '.join(support.APP_TABLES)} CASCADE")
    await support.drop_empty_past_partitions()


async def names(spec: partitions.Spec) -> set[str]:
    async with DB.transaction():
        return {p.name for p in await partitions.partitions(spec)}


async def test_history_partitions_are_prepared_with_the_step_logs() -> None:
    report = await partitions.ensure(partitions.MaintenanceReport())
    assert report.skipped == []
    now = datetime.datetime.now(datetime.UTC)
    for ahead in range(partitions.PARTITION_MONTHS_AHEAD + 1):
        start = partitions.period_start(now, "month", ahead)
        assert partitions.partition_name(partitions.HISTORY, start) in await names(
            partitions.HISTORY
        )
    # A history row's partition is its run's month, like its step logs'.
    workflow = await make_workflow()
    async with DB.transaction():
        run, _ = await runs.trigger_run(workflow["id"], inputs={}, idempotency_key=None)
    where = await DB.fetch(
        "SELECT tableoid::regclass::text FROM run_history WHERE run_id = $1", run["id"]
    )
    assert where[0][0] == partitions.partition_name(
        partitions.HISTORY, partitions.period_start(run["created_at"], "month")
    )
    # Its indexes are named after the table's (as the step logs' are).
    indexes = {
        r[0]
        for r in await DB.fetch(
            "SELECT indexname FROM pg_indexes WHERE tablename = $1", where[0][0]
        )
    }
    assert {f"{where[0][0]}_pkey", f"{where[0][0]}_run_id_recorded_at_idx"} <= indexes
