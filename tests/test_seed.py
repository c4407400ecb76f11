"""`piccolo flowforge seed`: the promised data, and the same data when run again."""

from __future__ import annotations

from typing import Any

import pytest

from flowforge.commands import seed
from flowforge.core.settings import get_settings
from flowforge.db.engine import DB
from flowforge.jobs.reaper import reap_stuck_runs
from flowforge.jobs.retention import prune
from flowforge.outbox.status import outbox_health
from tests import support

pytestmark = pytest.mark.usefixtures("db")


async def snapshot() -> dict[str, list[dict[str, Any]]]:
    """Every row of every app table, minus updated_at (the database's bookkeeping)."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for table in support.APP_TABLES:
        rows = await DB.fetch(f"SELECT * FROM {table} ORDER BY id")
        tables[table] = [{k: v for k, v in row.items() if k != "updated_at"} for row in rows]
    return tables


async def count(sql: str) -> int:
    return int((await DB.fetch(sql))[0][0])


async def test_seed_creates_the_promised_data() -> None:
    await seed.seed()
    roles = await DB.fetch("SELECT role FROM users ORDER BY role")
    assert [row["role"] for row in roles] == ["admin", "developer", "viewer"]
    assert await count("SELECT count(*) FROM workflows") == 5
    assert (
        await count(
            "SELECT count(*) FROM workflows w WHERE EXISTS "
            "(SELECT 1 FROM workflow_steps s WHERE s.workflow_id = w.id)"
        )
        == 5
    )
    assert await count("SELECT count(*) FROM workflow_runs") == 10
    statuses = await DB.fetch("SELECT DISTINCT status FROM workflow_runs")
    assert {row["status"] for row in statuses} == {
        "pending",
        "running",
        "completed",
        "failed",
        "cancelled",
    }
    # Every run that started has step logs; failed runs show retries.
    assert (
        await count(
            "SELECT count(*) FROM workflow_runs r WHERE started_at IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM run_step_logs l WHERE l.run_id = r.id)"
        )
        == 0
    )
    assert await count("SELECT max(attempt) FROM run_step_logs") >= 2
    # Every run and workflow has its events.
    assert (
        await count(
            "SELECT count(*) FROM workflow_runs r WHERE NOT EXISTS (SELECT 1 FROM outbox o "
            "WHERE o.aggregate_id = r.id AND o.event_type = 'run.created')"
        )
        == 0
    )
    assert await count("SELECT count(*) FROM outbox WHERE event_type = 'workflow.created'") == 5


async def test_seeding_twice_changes_nothing_and_emits_no_event() -> None:
    await seed.seed()
    first = await snapshot()
    await seed.seed()
    assert await snapshot() == first  # same rows, same events, nothing rewritten


async def test_reseeding_keeps_edits_and_other_data_and_never_resurrects_a_run_without_events() -> (
    None
):
    await seed.seed()
    await DB.fetch("UPDATE workflows SET description = 'edited by hand'")
    await DB.fetch("UPDATE outbox SET published_at = now()")
    await DB.fetch("INSERT INTO users (email, display_name) VALUES ('mine@example.com', 'Me')")
    # What prune does to an old finished run and its published events.
    gone = (
        await DB.fetch("DELETE FROM workflow_runs WHERE idempotency_key = 'seed-0' RETURNING id")
    )[0]["id"]
    await DB.fetch("DELETE FROM outbox WHERE aggregate_id = $1", gone)
    before = await snapshot()

    await seed.seed()
    after = await snapshot()
    assert after["workflows"] == before["workflows"]  # edits are not overwritten
    assert len(after["users"]) == 4
    # Published events stay published: events are facts, never rewritten.
    assert all(row["published_at"] is not None for row in before["outbox"])
    old_events = {row["id"]: row for row in after["outbox"]}
    assert all(old_events[row["id"]] == row for row in before["outbox"])
    # The pruned run is triggered again as a new run, with every event a run has.
    (again,) = await DB.fetch(
        "SELECT id, status FROM workflow_runs WHERE idempotency_key = 'seed-0'"
    )
    assert again["id"] != gone and again["status"] == "completed"
    types = [
        row["event_type"]
        for row in await DB.fetch(
            "SELECT event_type FROM outbox WHERE aggregate_id = $1 ORDER BY seq", again["id"]
        )
    ]
    assert types[:2] == ["run.created", "run.started"] and types[-1] == "run.completed"
    assert await count(RUNS_WITHOUT_CREATED_EVENT) == 0


RUNS_WITHOUT_CREATED_EVENT = (
    "SELECT count(*) FROM workflow_runs r WHERE NOT EXISTS (SELECT 1 FROM outbox o "
    "WHERE o.aggregate_id = r.id AND o.event_type = 'run.created')"
)


async def test_seed_data_is_dated_now_and_housekeeping_leaves_it_alone() -> None:
    await seed.seed()
    oldest = await DB.fetch(
        "SELECT extract(epoch FROM now() - min(created_at))::float8 AS age FROM outbox"
    )
    assert oldest[0]["age"] < 60  # /readyz lag is seconds, not months
    async with DB.transaction():
        health = await outbox_health()
    assert health["lag_seconds"] < 60
    before = await snapshot()
    settings = get_settings()
    reaped = await reap_stuck_runs(settings.run_lease_timeout)
    pruned = await prune(settings)
    assert reaped.runs == []
    assert (pruned.outbox_events, pruned.runs, pruned.step_logs) == (0, 0, 0)
    # Even once the relay has published everything.
    await DB.fetch("UPDATE outbox SET published_at = now()")
    assert (await prune(settings)).outbox_events == 0
    after = await snapshot()
    assert {table: len(rows) for table, rows in after.items()} == {
        table: len(rows) for table, rows in before.items()
    }


async def test_seed_cli(database_url: str) -> None:
    result = support.piccolo("flowforge", "seed", database_url=database_url)
    assert "seeded: 3 users, 5 workflows" in result.stdout
    assert await count("SELECT count(*) FROM workflow_runs") == 10
