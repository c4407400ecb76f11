"""Issue 17's migrations on a populated database: version 1 reconstructed, a
resumable backfill, backwards and forwards again without losing a row."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests import support
from tests.test_migrations import inventory

# The last migration before issue 17's: run history's (merged before them, so
# stepping back through the versions migrations leaves run_history in place).
BEFORE_VERSIONS = "2026-12-07T19:14:40:000000"
EXPAND = "2026-12-07T19:14:47:188500"
BACKFILL = "2026-12-07T19:14:50:000000"
CONTRACT = "2026-12-07T19:14:55:000000"
WORKFLOWS = 7


@pytest.fixture
async def scratch_url() -> AsyncIterator[str]:
    async with support.scratch_database("versions") as url:
        yield url


async def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


async def counts(url: str) -> dict[str, int]:
    tables = ("workflows", "workflow_steps", "workflow_runs", "run_step_logs", "outbox")
    return {t: (await fetch(url, f"SELECT count(*) AS n FROM {t}"))[0]["n"] for t in tables}


def forwards(url: str, migration_id: str | None = None) -> None:
    target = [f"--migration_id={migration_id}"] if migration_id else []
    support.piccolo("migrations", "forwards", "flowforge", *target, database_url=url)


def backwards(url: str, migration_id: str, check: bool = True) -> str:
    result = support.piccolo(
        "migrations",
        "backwards",
        "flowforge",
        f"--migration_id={migration_id}",
        "--auto_agree",
        database_url=url,
        check=check,
    )
    return result.stdout + result.stderr


async def populate_before_versions(url: str) -> None:
    """The schema as it was before issue 17, with workflows, steps, runs and step logs."""
    for app in ("user", "session_auth"):
        support.piccolo("migrations", "forwards", app, database_url=url)
    forwards(url, BEFORE_VERSIONS)
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            f"""
            INSERT INTO users (email, display_name) VALUES ('v@example.com', 'V');
            INSERT INTO workflows (owner_id, name, trigger_type, trigger_config)
            SELECT id, 'w' || g, 'schedule', jsonb_build_object('cron', g || ' * * * *')
            FROM users, generate_series(1, {WORKFLOWS}) AS g;
            INSERT INTO workflow_steps (workflow_id, position, name, action_type)
            SELECT w.id, p, 's' || p, 'noop' FROM workflows w, generate_series(0, 2) AS p;
            INSERT INTO workflow_runs (workflow_id, status, started_at)
            SELECT w.id, 'running', now() FROM workflows w, generate_series(1, 3);
            INSERT INTO run_step_logs (run_id, run_created_at, step_id, step_position, step_name,
                                       status, started_at)
            SELECT r.id, r.created_at, s.id, s.position, s.name, 'running', now()
            FROM workflow_runs r JOIN workflow_steps s ON s.workflow_id = r.workflow_id;
            """
        )
    finally:
        await connection.close()


async def test_versions_migrations_on_a_populated_database_backwards_and_forwards(
    scratch_url: str,
) -> None:
    await populate_before_versions(scratch_url)
    before = await counts(scratch_url)
    assert before["run_step_logs"] == WORKFLOWS * 3 * 3
    old_schema = await inventory(scratch_url)

    # Expand: the columns come with their constant default; no version yet.
    forwards(scratch_url, EXPAND)
    pinned = await fetch(scratch_url, "SELECT DISTINCT workflow_version FROM workflow_runs")
    assert [row["workflow_version"] for row in pinned] == [1]
    assert await fetch(scratch_url, "SELECT * FROM workflow_versions") == []

    # The backfill command, cut short after one batch, then resumed.
    cut = support.piccolo(
        "flowforge",
        "backfill_versions",
        "--batch_size=3",
        "--max_batches=1",
        database_url=scratch_url,
    )
    assert "3 versions written in 1 batches" in cut.stdout
    assert "still missing" in cut.stdout
    resumed = support.piccolo("flowforge", "backfill_versions", database_url=scratch_url)
    assert f"{WORKFLOWS - 3} versions written" in resumed.stdout
    assert "every workflow has its current version" in resumed.stdout

    # The rest: keys validated, unique index, old key dropped.
    forwards(scratch_url)
    built = await inventory(scratch_url)
    assert "workflow_steps_workflow_position_key" not in built["constraints"]
    assert "workflow_steps_workflow_version_position_key" in built["indexes"]
    validated = await fetch(
        scratch_url,
        "SELECT conname, convalidated FROM pg_constraint WHERE conname LIKE '%workflow_version_fkey'",
    )
    assert {row["conname"]: row["convalidated"] for row in validated} == {
        "workflow_steps_workflow_version_fkey": True,
        "workflow_runs_workflow_version_fkey": True,
    }
    versions = await fetch(
        scratch_url,
        "SELECT v.version, v.trigger_config = w.trigger_config AS same_trigger, "
        "v.created_by_user_id = w.owner_id AS by_owner FROM workflow_versions v "
        "JOIN workflows w ON w.id = v.workflow_id",
    )
    assert len(versions) == WORKFLOWS
    assert all(row["version"] == 1 and row["same_trigger"] and row["by_owner"] for row in versions)
    assert await counts(scratch_url) == before

    # Backwards through all three: the old schema, every row kept.
    backwards(scratch_url, EXPAND)
    assert await inventory(scratch_url) == old_schema
    assert await counts(scratch_url) == before

    # And forwards again: the same schema, version 1 reconstructed again.
    forwards(scratch_url)
    assert await inventory(scratch_url) == built
    assert await counts(scratch_url) == before
    assert len(await fetch(scratch_url, "SELECT 1 FROM workflow_versions")) == WORKFLOWS


async def test_stepping_back_refuses_to_drop_later_versions_unless_told(
    scratch_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await populate_before_versions(scratch_url)
    forwards(scratch_url)
    [workflow] = await fetch(scratch_url, "SELECT id, owner_id FROM workflows LIMIT 1")
    connection = await asyncpg.connect(scratch_url)
    try:
        # Version 2 of one workflow, as PUT /workflows/{id}/steps writes it.
        await connection.execute(
            "UPDATE workflows SET version = 2, revision = revision + 1 WHERE id = $1;",
            workflow["id"],
        )
        await connection.execute(
            "INSERT INTO workflow_versions (workflow_id, version) VALUES ($1, 2)", workflow["id"]
        )
        await connection.execute(
            "INSERT INTO workflow_steps (workflow_id, version, position, name, action_type) "
            "VALUES ($1, 2, 0, 'new', 'noop')",
            workflow["id"],
        )
    finally:
        await connection.close()
    before = await counts(scratch_url)

    refused = backwards(scratch_url, CONTRACT, check=False)
    assert "cannot restore UNIQUE (workflow_id, position)" in refused
    assert str(workflow["id"]) in refused
    assert "FLOWFORGE_DISCARD_OLD_VERSIONS=1" in refused
    applied = await support.applied_migrations(scratch_url)
    assert applied[("flowforge", CONTRACT)] == 1
    assert await counts(scratch_url) == before

    monkeypatch.setenv("FLOWFORGE_DISCARD_OLD_VERSIONS", "1")
    backwards(scratch_url, CONTRACT)
    after = await counts(scratch_url)
    # Version 1's three steps of that workflow go (the current version's stay);
    # their step logs stay, their step_id becomes NULL.
    assert after == {**before, "workflow_steps": before["workflow_steps"] - 3}
    orphaned = await fetch(
        scratch_url, "SELECT count(*) AS n FROM run_step_logs WHERE step_id IS NULL"
    )
    assert orphaned[0]["n"] == 3 * 3
    forwards(scratch_url)


async def test_stepping_back_the_expand_does_not_deadlock_a_request(scratch_url: str) -> None:
    """A request has read users (its authentication joins it) and reads runs next,
    while the expand is stepped back. Dropping workflow_versions drops its key to
    users, which takes ACCESS EXCLUSIVE on users: taken by the DROP TABLE, behind
    the migration's locks on the runs, it deadlocked with such a request
    (benchmarks.migrations at 1M runs: 1 s stalls, then a failed request or a failed
    migration). Both now finish, and the schema is the one before the expand."""
    await populate_before_versions(scratch_url)
    old_schema = await inventory(scratch_url)
    forwards(scratch_url, EXPAND)
    request = await asyncpg.connect(scratch_url)
    try:
        async with request.transaction():
            await request.fetchval("SELECT count(*) FROM users")
            stepping_back = asyncio.create_task(asyncio.to_thread(backwards, scratch_url, EXPAND))
            # The migration waits for a lock (users, which this request holds).
            await support.wait_for_lock_waiter(scratch_url, "")
            runs = await asyncio.wait_for(
                request.fetchval("SELECT count(*) FROM workflow_runs"), timeout=10
            )
        assert runs == WORKFLOWS * 3
        await stepping_back
    finally:
        await request.close()
    assert await inventory(scratch_url) == old_schema
    assert (await support.applied_migrations(scratch_url))[("flowforge", EXPAND)] == 0
