"""Pruning history and reaping stuck runs: what goes, what stays, and doing it twice."""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid
from typing import Any

import pytest

from flowforge.commands import operations as cli
from flowforge.core.errors import InvalidTransitionError, NotFoundError
from flowforge.core.events import run_payload
from flowforge.core.json import loads
from flowforge.db.engine import DB
from flowforge.domain import runs as run_operations
from flowforge.jobs import partitions
from flowforge.jobs.reaper import reap_stuck_runs
from flowforge.jobs.retention import prune
from tests import relay_support as rs
from tests import support

pytestmark = pytest.mark.usefixtures("db")

DAY = datetime.timedelta(days=1)


async def make_workflow() -> uuid.UUID:
    user = (
        await DB.fetch(
            "INSERT INTO users (email, display_name) VALUES ($1, 'U') RETURNING id",
            f"{uuid.uuid4().hex[:8]}@example.com",
        )
    )[0]["id"]
    rows = await DB.fetch(
        "INSERT INTO workflows (owner_id, name) VALUES ($1, 'w') RETURNING id", user
    )
    return rows[0]["id"]  # type: ignore[no-any-return]


async def make_run(
    workflow: uuid.UUID,
    status: str,
    *,
    started_ago: datetime.timedelta | None = None,
    finished_ago: datetime.timedelta | None = None,
    heartbeat_ago: datetime.timedelta | None = None,
    step_logs: tuple[str, ...] = (),
) -> uuid.UUID:
    now = datetime.datetime.now(datetime.UTC)
    started = now - started_ago if started_ago is not None else None
    finished = now - finished_ago if finished_ago is not None else None
    run = (
        await DB.fetch(
            "INSERT INTO workflow_runs (workflow_id, status, started_at, finished_at, "
            "heartbeat_at, error) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            workflow,
            status,
            started,
            finished,
            now - heartbeat_ago if heartbeat_ago is not None else None,
            "boom" if status == "failed" else None,
        )
    )[0]["id"]
    for position, log_status in enumerate(step_logs):
        await DB.fetch(
            "INSERT INTO run_step_logs (run_id, run_created_at, step_position, step_name, status, "
            "started_at, finished_at) "
            "SELECT $1, created_at, $2, 's', $3, $4, $5 FROM workflow_runs WHERE id = $1",
            run,
            position,
            log_status,
            started if log_status != "pending" else None,
            (finished or started) if log_status in ("completed", "failed", "cancelled") else None,
        )
    return run  # type: ignore[no-any-return]


async def ids(sql: str, *args: Any) -> set[uuid.UUID]:
    return {row[0] for row in await DB.fetch(sql, *args)}


# -- prune ---------------------------------------------------------------------


async def test_prune_removes_only_expired_published_events_and_finished_runs() -> None:
    await rs.insert_events(aggregates=5, per_aggregate=5)  # 25 events
    await DB.fetch(
        """
        UPDATE outbox SET published_at = now() - make_interval(days => (payload->>'n')::int * 3)
        WHERE (payload->>'n')::int <= 4
        """
    )  # published 3, 6, 9, 12 days ago (5 each); n = 5 never published
    await DB.fetch(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, attempts, last_error, "
        "dead_lettered_at, created_at) VALUES ('w', gen_random_uuid(), 'e', 3, 'x', "
        "now() - interval '60 days', now() - interval '60 days')"
    )
    workflow = await make_workflow()
    old = [
        await make_run(
            workflow, status, started_ago=40 * DAY, finished_ago=35 * DAY, step_logs=logs
        )
        for status, logs in [
            ("completed", ("completed", "completed")),
            ("failed", ("completed", "failed")),
            ("cancelled", ()),
        ]
    ]
    recent = await make_run(workflow, "completed", started_ago=2 * DAY, finished_ago=1 * DAY)
    running = await make_run(workflow, "running", started_ago=50 * DAY, step_logs=("running",))
    pending = await make_run(workflow, "pending")
    settings = rs.relay_settings(outbox_retention_days=7, run_retention_days=30, prune_batch_size=4)

    dry = await prune(settings, dry_run=True)
    assert (dry.outbox_events, dry.runs, dry.step_logs) == (10, 3, 4)
    assert await rs.count("SELECT count(*) FROM outbox") == 26

    report = await prune(settings)
    assert (report.outbox_events, report.runs, report.step_logs) == (10, 3, 4)
    assert report.describe() == (
        "pruned: 10 published outbox events, 3 finished runs with 4 step logs"
    )
    # Kept: recently published, unpublished, dead-lettered (however old).
    assert await rs.count("SELECT count(*) FROM outbox") == 16
    assert (
        await rs.count("SELECT count(*) FROM outbox WHERE published_at < now() - interval '7 days'")
        == 0
    )
    assert await rs.count("SELECT count(*) FROM outbox WHERE dead_lettered_at IS NOT NULL") == 1
    assert await ids("SELECT id FROM workflow_runs") == {recent, running, pending}
    assert not await ids("SELECT run_id FROM run_step_logs WHERE run_id = ANY($1)", old)
    assert await rs.count("SELECT count(*) FROM run_step_logs") == 1  # the running run's

    again = await prune(settings)  # idempotent
    assert (again.outbox_events, again.runs, again.step_logs) == (0, 0, 0)


async def test_a_retention_of_zero_keeps_that_history_forever() -> None:
    await rs.insert_events(aggregates=1, per_aggregate=3)
    await DB.fetch("UPDATE outbox SET published_at = now() - interval '1000 days'")
    workflow = await make_workflow()
    await make_run(workflow, "completed", started_ago=999 * DAY, finished_ago=999 * DAY)
    report = await prune(rs.relay_settings(outbox_retention_days=0, run_retention_days=0))
    assert (report.outbox_events, report.runs) == (0, 0)
    assert await rs.count("SELECT count(*) FROM outbox") == 3


async def test_prune_skips_rows_locked_by_others_instead_of_waiting(database_url: str) -> None:
    import asyncpg

    await rs.insert_events(aggregates=1, per_aggregate=4)
    await DB.fetch("UPDATE outbox SET published_at = now() - interval '30 days'")
    locked = (await DB.fetch("SELECT id FROM outbox ORDER BY seq LIMIT 1"))[0]["id"]
    other = await asyncpg.connect(database_url)
    try:
        async with other.transaction():
            await other.execute("SELECT 1 FROM outbox WHERE id = $1 FOR UPDATE", locked)
            report = await asyncio.wait_for(prune(rs.relay_settings(prune_batch_size=2)), 10)
            assert report.outbox_events == 3
    finally:
        await other.close()
    assert await ids("SELECT id FROM outbox") == {locked}
    assert (await prune(rs.relay_settings())).outbox_events == 1  # next time


# -- reap ----------------------------------------------------------------------


async def test_reap_fails_runs_whose_lease_expired_with_their_event() -> None:
    workflow = await make_workflow()
    lease = 600.0
    stuck = await make_run(
        workflow,
        "running",
        started_ago=datetime.timedelta(hours=2),
        step_logs=("completed", "running", "pending"),
    )
    stale_beat = await make_run(
        workflow,
        "running",
        started_ago=datetime.timedelta(hours=3),
        heartbeat_ago=datetime.timedelta(minutes=11),
    )
    alive = await make_run(
        workflow,
        "running",
        started_ago=datetime.timedelta(hours=3),
        heartbeat_ago=datetime.timedelta(minutes=2),
    )
    young = await make_run(workflow, "running", started_ago=datetime.timedelta(minutes=5))
    pending = await make_run(workflow, "pending")
    done = await make_run(
        workflow,
        "completed",
        started_ago=datetime.timedelta(days=3),
        finished_ago=datetime.timedelta(days=2),
    )

    report = await reap_stuck_runs(lease, batch_size=1)
    assert set(report.runs) == {stuck, stale_beat}
    assert report.batches == 2

    runs = {row["id"]: row for row in await DB.fetch("SELECT * FROM workflow_runs")}
    for run_id in (stuck, stale_beat):
        run = runs[run_id]
        assert run["status"] == "failed"
        assert run["finished_at"] >= run["started_at"]
        assert run["error"].startswith("Reaped: no heartbeat since ")
        assert "(lease 600 s)" in run["error"]
    for run_id in (alive, young):
        assert runs[run_id]["status"] == "running"
    assert runs[pending]["status"] == "pending" and runs[done]["status"] == "completed"

    logs = await DB.fetch(
        "SELECT status, error FROM run_step_logs WHERE run_id = $1 ORDER BY step_position", stuck
    )
    assert [row["status"] for row in logs] == ["completed", "failed", "cancelled"]
    assert "reaped" in logs[1]["error"]

    everything = await DB.fetch("SELECT * FROM outbox ORDER BY seq")
    # Each attempt the reap closed has its run.step_logged (issue 17).
    closed = [loads(row["payload"]) for row in everything if row["event_type"] == "run.step_logged"]
    assert sorted((e["step_position"], e["status"]) for e in closed) == [
        (1, "failed"),
        (2, "cancelled"),
    ]
    assert {e["run_id"] for e in closed} == {str(stuck)}
    events = [row for row in everything if row["event_type"] != "run.step_logged"]
    assert {(row["aggregate_type"], row["event_type"]) for row in events} == {
        ("workflow_run", "run.failed")
    }
    by_run = {row["aggregate_id"]: loads(row["payload"]) for row in events}
    assert set(by_run) == {stuck, stale_beat}
    run = runs[stuck]
    expected = json.loads(json.dumps(run_payload(dict(run), "running"), default=str))
    payload = by_run[stuck]
    assert payload["status"] == "failed" and payload["previous_status"] == "running"
    assert payload["error"] == expected["error"]
    assert payload["run_id"] == str(stuck) and payload["workflow_id"] == str(workflow)

    again = await reap_stuck_runs(lease)  # idempotent
    assert again.runs == []
    assert await rs.count("SELECT count(*) FROM outbox") == 4


async def test_a_reap_dry_run_lists_the_stuck_runs_and_changes_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    workflow = await make_workflow()
    stuck = await make_run(
        workflow,
        "running",
        started_ago=datetime.timedelta(hours=2),
        step_logs=("completed", "running", "pending", "pending"),
    )
    await make_run(
        workflow,
        "running",
        started_ago=datetime.timedelta(hours=3),
        heartbeat_ago=datetime.timedelta(minutes=2),
    )
    tables = ("workflow_runs", "run_step_logs", "outbox")
    before = {table: await DB.fetch(f"SELECT * FROM {table} ORDER BY 1") for table in tables}

    dry = await reap_stuck_runs(600, dry_run=True)
    assert dry.runs == [stuck] and dry.batches == 0
    [detail] = dry.details
    assert (detail["running_steps"], detail["pending_steps"]) == (1, 2)
    await cli.reap(dry_run=True)
    out = capsys.readouterr().out
    assert out.startswith("would reap: 1 runs (lease 900 s)\n"), out
    assert f"run {stuck} of workflow {workflow}" in out
    assert "would fail 1 running and cancel 2 pending step attempts" in out
    after = {table: await DB.fetch(f"SELECT * FROM {table} ORDER BY 1") for table in tables}
    assert after == before  # nothing changed, no event written

    real = await reap_stuck_runs(600)  # then does what the dry run said
    assert real.runs == dry.runs


async def test_a_heartbeat_keeps_a_run_alive_and_only_running_runs_beat() -> None:
    workflow = await make_workflow()
    run = await make_run(workflow, "running", started_ago=datetime.timedelta(hours=1))
    async with DB.transaction():
        await run_operations.heartbeat_run(run)  # the heartbeat route's operation
    assert (await reap_stuck_runs(600)).runs == []
    pending = await make_run(workflow, "pending")
    with pytest.raises(InvalidTransitionError):
        async with DB.transaction():
            await run_operations.heartbeat_run(pending)
    with pytest.raises(NotFoundError):
        async with DB.transaction():
            await run_operations.heartbeat_run(uuid.uuid4())


async def test_concurrent_reapers_fail_each_run_once() -> None:
    workflow = await make_workflow()
    runs = {
        await make_run(workflow, "running", started_ago=datetime.timedelta(hours=1))
        for _ in range(30)
    }
    reports = await asyncio.gather(*(reap_stuck_runs(60, batch_size=4) for _ in range(3)))
    reaped = [run for report in reports for run in report.runs]
    assert sorted(reaped) == sorted(runs)  # each exactly once
    assert await rs.count("SELECT count(*) FROM outbox WHERE event_type = 'run.failed'") == 30


# -- the commands ----------------------------------------------------------------


async def test_commands_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    workflow = await make_workflow()
    await make_run(workflow, "running", started_ago=datetime.timedelta(days=2))
    await cli.reap()
    assert "reaped: 1 runs (lease 900 s)" in capsys.readouterr().out

    await DB.fetch("UPDATE outbox SET attempts = 5, last_error = 'nope', dead_lettered_at = now()")
    await cli.outbox_status(json_output=True)
    status = json.loads(capsys.readouterr().out)
    assert status["dead_lettered"] == 1 and status["dead_letters"][0]["last_error"] == "nope"
    await cli.outbox_status()
    text = capsys.readouterr().out
    assert "dead-lettered:" in text and "after 5 attempts" in text

    with pytest.raises(SystemExit):
        await cli.outbox_requeue()
    with pytest.raises(SystemExit):
        await cli.outbox_requeue(event_id="nope")
    dead = (await DB.fetch("SELECT id FROM outbox"))[0]["id"]
    await cli.outbox_requeue(event_id=str(dead))
    assert "requeued: 1 dead-lettered events" in capsys.readouterr().out
    await cli.outbox_requeue(all_dead_letters=True)
    assert "requeued: 0 dead-lettered events" in capsys.readouterr().out

    await cli.prune(dry_run=True)
    assert capsys.readouterr().out.startswith("would prune: 0 published outbox events")


async def test_prune_and_reap_commands_through_the_cli(database_url: str) -> None:
    workflow = await make_workflow()
    await make_run(workflow, "completed", started_ago=400 * DAY, finished_ago=400 * DAY)
    await make_run(workflow, "running", started_ago=datetime.timedelta(days=1))
    reap = await asyncio.to_thread(support.piccolo, "flowforge", "reap", database_url=database_url)
    assert "reaped: 1 runs" in reap.stdout
    result = await asyncio.to_thread(
        support.piccolo, "flowforge", "prune", database_url=database_url
    )
    assert "pruned: 0 published outbox events, 1 finished runs with 0 step logs" in result.stdout
    assert "retention.pruned" in result.stderr  # the CLI logs like the API (console here)


# -- metrics ----------------------------------------------------------------------


def housekeeping_samples() -> dict[str, float]:
    from prometheus_client import REGISTRY, generate_latest

    from tests.metrics_support import parse

    samples = parse(generate_latest(REGISTRY).decode())
    return {
        key: value
        for key, value in samples.items()
        if key.startswith(("flowforge_reaper_", "flowforge_pruned_rows"))
    }


async def test_reaper_and_prune_counts_are_exported() -> None:
    workflow = await make_workflow()
    await make_run(workflow, "running", started_ago=DAY)
    await make_run(workflow, "running", started_ago=DAY, heartbeat_ago=2 * DAY)
    await make_run(
        workflow,
        "completed",
        started_ago=400 * DAY,
        finished_ago=400 * DAY,
        step_logs=("completed",),
    )
    before = housekeeping_samples()
    assert len((await reap_stuck_runs(900)).runs) == 2
    report = await prune(rs.relay_settings(outbox_retention_days=0, run_retention_days=30))
    assert (report.runs, report.step_logs) == (1, 1)
    after = housekeeping_samples()
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    assert delta["flowforge_reaper_runs_failed_total"] == 2
    assert delta['flowforge_pruned_rows_total{kind="runs"}'] == 1
    assert delta['flowforge_pruned_rows_total{kind="step_logs"}'] == 1
    assert delta['flowforge_pruned_rows_total{kind="outbox_events"}'] == 0


async def test_batch_jobs_refuse_to_run_inside_a_transaction(db: None) -> None:
    # Inside one, every batch would commit only with the caller: the point of
    # batches (short locks, progress kept on failure) would be lost silently.
    async with DB.transaction():
        with pytest.raises(RuntimeError, match="reap_stuck_runs commits batch by batch"):
            await reap_stuck_runs(60)
        with pytest.raises(RuntimeError, match="prune commits batch by batch"):
            await prune(rs.relay_settings())
        with pytest.raises(RuntimeError, match="partition maintenance commits batch by batch"):
            await partitions.maintain(outbox_retention_days=7, run_retention_days=30)


async def test_a_run_prune_batch_leaves_the_callers_plan_cache_mode_alone(db: None) -> None:
    from flowforge.jobs.retention import prune_runs_batch

    async with DB.transaction():
        before = (await DB.fetch("SELECT current_setting('plan_cache_mode') AS m"))[0]["m"]
        await prune_runs_batch(30 * 86400, 10)
        after = (await DB.fetch("SELECT current_setting('plan_cache_mode') AS m"))[0]["m"]
    assert before == after == "auto"
