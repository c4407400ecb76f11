"""A migration that fails part-way (bad data, a killed process) leaves a database
from which both directions work, and says which rows stopped it (issue 17).

The partitioning migration (2026-11-30T00:39:50) on a scratch database seeded at
the schema before it, through the real `piccolo` CLI: made to fail by a step log
whose run_created_at is not its run's created_at (bad data), or killed in
its backfill (a killed process). Then the migration before it
(2026-11-30T00:39:47, the column) steps back cleanly to the schema the database
had before either, and forwards works once the cause is gone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests import support
from tests.test_migrations import (
    BEFORE_PARTITIONING_MIGRATION_ID,
    RUN_CREATED_AT_MIGRATION_ID,
    add_run_created_at,
    contents,
    interrupt_in_the_backfill,
    inventory,
    migrate_before_partitioning,
    partitioned_tables,
    seed_before_partitioning,
)


@pytest.fixture
async def scratch_url() -> AsyncIterator[str]:
    name = support.database_name("failures")
    yield await support.create_database(name)
    await support.drop_database(name)


async def plain_schema() -> dict[str, set[str]]:
    """The objects of a database migrated to just before the column migration."""
    async with support.scratch_database("failures_ref") as url:
        await migrate_before_partitioning(url)
        return await inventory(url)


def step_back_the_column(url: str) -> None:
    support.piccolo(
        "migrations", "backwards", "flowforge", f"--migration_id={RUN_CREATED_AT_MIGRATION_ID}",
        "--auto_agree", database_url=url,
    )  # fmt: skip


async def applied(url: str) -> set[str]:
    return {name for app, name in await support.applied_migrations(url) if app == "flowforge"}


async def corrupt_one_step_log(url: str) -> str:
    """A step log whose run_created_at is a second off its run's (a buggy writer): its id.
    (Triggers skipped: its updated_at stays, so the rows compare equal after.)"""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("SET session_replication_role = replica")
        return str(
            await connection.fetchval(
                "UPDATE run_step_logs l SET run_created_at = r.created_at + interval '1 second' "
                "FROM workflow_runs r WHERE r.id = l.run_id "
                "AND l.id = (SELECT id FROM run_step_logs ORDER BY id LIMIT 1) RETURNING l.id"
            )
        )
    finally:
        await connection.close()


async def fix_step_logs(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("SET session_replication_role = replica")
        await connection.execute(
            "UPDATE run_step_logs l SET run_created_at = r.created_at FROM workflow_runs r "
            "WHERE r.id = l.run_id AND l.run_created_at IS DISTINCT FROM r.created_at"
        )
    finally:
        await connection.close()


async def test_bad_data_stops_partitioning_and_both_directions_work_after(
    scratch_url: str,
) -> None:
    reference = await plain_schema()
    await migrate_before_partitioning(scratch_url)
    await seed_before_partitioning(scratch_url, runs=200)
    before = await contents(scratch_url)
    await add_run_created_at(scratch_url)
    bad = await corrupt_one_step_log(scratch_url)

    # Forwards fails part-way (the outbox is already partitioned by then) and
    # names the row that stopped it.
    failed = support.piccolo("migrations", "forwards", "all", database_url=scratch_url, check=False)
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert bad in output, output
    assert "run_created_at" in output
    assert "2026-11-30T00:39:50:000000" not in await applied(scratch_url)
    assert "outbox" in await partitioned_tables(scratch_url)

    # Backwards: the column's migration steps back (it failed with "cannot drop
    # column run_created_at ... trigger depends on it"), and the schema is the
    # one before both migrations, every row in place.
    step_back_the_column(scratch_url)
    assert await inventory(scratch_url) == reference
    assert await partitioned_tables(scratch_url) == {}
    assert await contents(scratch_url) == before

    # Forwards again, the same bad row injected: fails the same way; the row
    # fixed, forwards completes.
    await add_run_created_at(scratch_url)
    bad = await corrupt_one_step_log(scratch_url)
    failed = support.piccolo("migrations", "forwards", "all", database_url=scratch_url, check=False)
    assert failed.returncode != 0
    assert bad in failed.stdout + failed.stderr
    await fix_step_logs(scratch_url)
    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    assert set(await partitioned_tables(scratch_url)) == {"outbox", "run_step_logs"}
    assert await contents(scratch_url) == before

    # And all the way back once more, from a completed forwards.
    step_back_the_column(scratch_url)
    assert await inventory(scratch_url) == reference
    assert await contents(scratch_url) == before


async def test_a_killed_partitioning_leaves_a_database_both_directions_work_from(
    scratch_url: str,
) -> None:
    reference = await plain_schema()
    await migrate_before_partitioning(scratch_url)
    await seed_before_partitioning(scratch_url, runs=500)
    before = await contents(scratch_url)
    await add_run_created_at(scratch_url)

    # Killed in the backfill (a row lock holds it up there): the fill trigger,
    # the (id, created_at) key of the runs and the partitioned outbox are left.
    await interrupt_in_the_backfill(scratch_url)
    assert "outbox" in await partitioned_tables(scratch_url)
    assert "run_step_logs_fill_run_created_at" in (await inventory(scratch_url))["triggers"]

    step_back_the_column(scratch_url)
    assert await inventory(scratch_url) == reference
    assert await contents(scratch_url) == before
    assert await applied(scratch_url) >= {BEFORE_PARTITIONING_MIGRATION_ID}

    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    assert set(await partitioned_tables(scratch_url)) == {"outbox", "run_step_logs"}
    assert await contents(scratch_url) == before
