"""`piccolo flowforge seed`: the promised data, and the same data when run again."""

from __future__ import annotations

from typing import Any

import pytest

from flowforge.commands import seed
from flowforge.db.engine import DB
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


async def test_seeding_twice_leaves_the_same_data() -> None:
    await seed.seed()
    first = await snapshot()
    await seed.seed()
    assert await snapshot() == first


async def test_reseeding_restores_edited_seed_rows_and_keeps_other_data() -> None:
    await seed.seed()
    first = await snapshot()
    await DB.fetch("UPDATE workflows SET name = 'edited'")
    await DB.fetch("UPDATE outbox SET published_at = now()")
    await DB.fetch("INSERT INTO users (email, display_name) VALUES ('mine@example.com', 'Me')")
    await seed.seed()
    after = await snapshot()
    assert after["workflows"] == first["workflows"]
    assert len(after["users"]) == 4
    # Published events stay published: events are facts, never rewritten.
    assert all(row["published_at"] is not None for row in after["outbox"])


def test_seed_data_is_deterministic() -> None:
    assert seed.build() == seed.build()


async def test_seed_cli(database_url: str) -> None:
    result = support.piccolo("flowforge", "seed", database_url=database_url)
    assert "seeded: 3 users, 5 workflows" in result.stdout
    assert await count("SELECT count(*) FROM workflow_runs") == 10
