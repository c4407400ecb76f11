"""The migrations themselves, through the real `piccolo` CLI, on scratch databases."""

from __future__ import annotations

import asyncio
import datetime
import importlib
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from piccolo.apps.migrations.commands.new import AutoMigrationManager
from piccolo.columns import Varchar
from piccolo.conf.apps import AppConfig
from piccolo.constraints import Check

from flowforge.db import tables
from flowforge.piccolo_app import APP_CONFIG
from tests import support

RAW_MIGRATION_ID = "2026-11-25T13:24:39:823524"
# Issue 4: the relay/retention columns, then their indexes and notify trigger.
RELAY_COLUMNS_MIGRATION_ID = "2026-11-25T13:44:23:411180"
RELAY_RAW_MIGRATION_ID = "2026-11-25T13:44:40:219100"
RELAY_INDEXES = {
    "outbox_claim_idx",
    "outbox_aggregate_unpublished_idx",
    "outbox_published_at_idx",
    "outbox_dead_lettered_idx",
    "workflow_runs_running_lease_idx",
    "workflow_runs_terminal_finished_at_idx",
}

# Every database object the flowforge app creates, by kind.
APP_INDEXES = {
    "users_email_lower_key",
    "workflows_owner_id_created_at_idx",
    "workflow_runs_workflow_id_created_at_idx",
    "workflow_runs_workflow_id_status_created_at_idx",
    "workflow_runs_status_created_at_idx",
    "workflow_runs_triggered_by_user_id_idx",
    "run_step_logs_step_id_idx",
    *RELAY_INDEXES,
    "api_keys_user_id",
    "api_keys_prefix_key",
    "api_keys_granted_by_key_id_idx",
    "workflow_steps_workflow_version_position_key",
    "workflow_versions_pkey",
    "workflow_versions_workflow_version_key",
    "workflow_runs_workflow_idempotency_key",
    "run_step_logs_run_step_attempt_key",
    "workflow_runs_id_created_at_key",
    "run_history_pkey",
    "run_history_run_id_recorded_at_idx",
}
ALL_APP_TABLES = {*support.APP_TABLES, "piccolo_user", "sessions"}


async def inventory(url: str) -> dict[str, set[str]]:
    """The app-created objects present in the database at `url`."""
    connection = await asyncpg.connect(url)
    try:
        # Partitions (and what PostgreSQL clones onto them) are listed by
        # tests/test_partitions.py: here, the tables as the app sees them.
        tables_ = await connection.fetch(
            "SELECT relname AS tablename FROM pg_class "
            "WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p') "
            "AND NOT relispartition AND relname <> 'migration'"
        )
        indexes = await connection.fetch(
            "SELECT i.relname AS indexname FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
            "WHERE t.relnamespace = 'public'::regnamespace AND NOT t.relispartition "
            "AND t.relname <> 'migration'"
        )
        triggers = await connection.fetch(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgparentid = 0"
        )
        functions = await connection.fetch(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
        )
        constraints = await connection.fetch(
            "SELECT conname FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
            "WHERE connamespace = 'public'::regnamespace AND NOT t.relispartition "
            "AND conrelid <> COALESCE(to_regclass('public.migration'), 0)::oid"
        )
    finally:
        await connection.close()
    return {
        "tables": {row["tablename"] for row in tables_},
        "indexes": {row["indexname"] for row in indexes},
        "triggers": {row["tgname"] for row in triggers},
        "functions": {row["proname"] for row in functions},
        "constraints": {row["conname"] for row in constraints},
    }


# Stepping back past the migration that creates run_history drops it with its
# rows (like any table a step back removes); the tests that step back further
# count the other tables. Its own rows through its own migrations:
# test_stepping_the_history_migrations_back_and_forwards_keeps_every_entry.
COUNTED_TABLES = [table for table in support.APP_TABLES if table != "run_history"]


async def row_counts(url: str) -> dict[str, int]:
    """Rows per app table that exists in every migration state the tests step through.

    workflow_versions exists only from issue 17's migrations on (stepping back
    before them drops it): its rows are checked by the versions migration tests.
    """
    connection = await asyncpg.connect(url)
    try:
        # Stepping back past issue 18 removes concurrency_limits: 0 rows then.
        return {
            table: (
                await connection.fetchval(f"SELECT count(*) FROM {table}")
                if await connection.fetchval("SELECT to_regclass($1)", f"public.{table}")
                else 0
            )
            for table in COUNTED_TABLES
            if table != "workflow_versions"
        }
    finally:
        await connection.close()


@pytest.fixture
async def scratch_url() -> AsyncIterator[str]:
    name = support.database_name("scratch")
    yield await support.create_database(name)
    await support.drop_database(name)


async def test_forwards_backwards_forwards_cycle(scratch_url: str) -> None:
    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    built = await inventory(scratch_url)
    assert built["tables"] == ALL_APP_TABLES
    assert built["indexes"] >= APP_INDEXES
    assert {
        f"{table}_set_updated_at"
        for table in support.APP_TABLES
        if table not in ("run_history", "workflow_versions")
    } <= built["triggers"]
    assert "flowforge_set_updated_at" in built["functions"]
    assert "outbox_notify" in built["triggers"]
    assert "flowforge_outbox_notify" in built["functions"]
    # Superseded by outbox_claim_idx (publish order is seq, not created_at).
    assert "outbox_unpublished_idx" not in built["indexes"]

    support.piccolo(
        "migrations",
        "backwards",
        "all",
        "--migration_id=all",
        "--auto_agree",
        database_url=scratch_url,
    )
    assert await inventory(scratch_url) == {
        "tables": set(),
        "indexes": set(),
        "triggers": set(),
        "functions": set(),
        "constraints": set(),
    }

    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    assert await inventory(scratch_url) == built


async def test_stepping_back_the_index_and_trigger_migration_loses_no_rows(
    scratch_url: str,
) -> None:
    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    support.piccolo("flowforge", "seed", database_url=scratch_url)
    seeded = await row_counts(scratch_url)
    assert seeded["workflow_runs"] == 10 and seeded["run_step_logs"] > 0 and seeded["outbox"] > 0
    built = await inventory(scratch_url)

    support.piccolo(
        "migrations",
        "backwards",
        "flowforge",
        f"--migration_id={RAW_MIGRATION_ID}",
        "--auto_agree",
        database_url=scratch_url,
    )
    stepped_back = await inventory(scratch_url)
    assert "outbox_unpublished_idx" not in stepped_back["indexes"]
    assert "users_set_updated_at" not in stepped_back["triggers"]
    # Stepping back that far also steps back issue 17's and 18's migrations
    # (run_history, workflow_versions and concurrency_limits go; the seed has no
    # limit; run_history's rows are not counted, see COUNTED_TABLES).
    assert stepped_back["tables"] == built["tables"] - {
        "run_history",
        "workflow_versions",
        "concurrency_limits",
    }
    assert await row_counts(scratch_url) == seeded

    support.piccolo("migrations", "forwards", "flowforge", database_url=scratch_url)
    assert await inventory(scratch_url) == built
    assert await row_counts(scratch_url) == seeded


async def test_stepping_the_relay_migrations_back_and_forwards_keeps_the_data(
    scratch_url: str,
) -> None:
    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    support.piccolo("flowforge", "seed", database_url=scratch_url)
    seeded = await row_counts(scratch_url)
    built = await inventory(scratch_url)

    # The index/trigger migration alone: only those objects change, no row does.
    support.piccolo(
        "migrations",
        "backwards",
        "flowforge",
        f"--migration_id={RELAY_RAW_MIGRATION_ID}",
        "--auto_agree",
        database_url=scratch_url,
    )
    stepped_back = await inventory(scratch_url)
    assert not RELAY_INDEXES & stepped_back["indexes"]
    assert "outbox_unpublished_idx" in stepped_back["indexes"]
    assert "outbox_notify" not in stepped_back["triggers"]
    assert "flowforge_outbox_notify" not in stepped_back["functions"]
    assert await row_counts(scratch_url) == seeded

    # The column migration too: the relay's columns and constraints go.
    support.piccolo(
        "migrations",
        "backwards",
        "flowforge",
        f"--migration_id={RELAY_COLUMNS_MIGRATION_ID}",
        "--auto_agree",
        database_url=scratch_url,
    )
    assert "outbox_dead_letter_has_error" not in (await inventory(scratch_url))["constraints"]
    assert await row_counts(scratch_url) == seeded

    support.piccolo("migrations", "forwards", "flowforge", database_url=scratch_url)
    assert await inventory(scratch_url) == built
    assert await row_counts(scratch_url) == seeded


# Issue 15: api_keys.granted_by_key_id, then its index.
GRANTED_BY_MIGRATION_ID = "2026-12-07T15:58:32:404747"
GRANTED_BY_INDEX_MIGRATION_ID = "2026-12-07T15:58:40:000000"


async def test_stepping_the_granted_by_migrations_back_and_forwards_keeps_every_key(
    scratch_url: str,
) -> None:
    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    support.piccolo("flowforge", "seed", database_url=scratch_url)
    connection = await asyncpg.connect(scratch_url)
    try:
        # A key granted by the seed's key, as POST /api-keys records it.
        await connection.execute(
            "INSERT INTO api_keys (user_id, name, prefix, key_hash, granted_by_key_id) "
            "SELECT user_id, 'granted', 'granted0granted0', repeat('0', 64), id "
            "FROM api_keys ORDER BY created_at LIMIT 1"
        )
        seeded = await row_counts(scratch_url)
        assert seeded["api_keys"] >= 2
        built = await inventory(scratch_url)
        assert "api_keys_granted_by_key_id_fkey" in built["constraints"]

        support.piccolo(
            "migrations",
            "backwards",
            "flowforge",
            f"--migration_id={GRANTED_BY_INDEX_MIGRATION_ID}",
            "--auto_agree",
            database_url=scratch_url,
        )
        assert "api_keys_granted_by_key_id_idx" not in (await inventory(scratch_url))["indexes"]
        support.piccolo(
            "migrations",
            "backwards",
            "flowforge",
            f"--migration_id={GRANTED_BY_MIGRATION_ID}",
            "--auto_agree",
            database_url=scratch_url,
        )
        stepped_back = await inventory(scratch_url)
        assert "api_keys_granted_by_key_id_fkey" not in stepped_back["constraints"]
        column = "SELECT count(*) FROM pg_attribute WHERE attrelid = 'api_keys'::regclass " + (
            "AND attname = 'granted_by_key_id' AND NOT attisdropped"
        )
        assert await connection.fetchval(column) == 0
        assert await row_counts(scratch_url) == seeded

        support.piccolo("migrations", "forwards", "flowforge", database_url=scratch_url)
        assert await inventory(scratch_url) == built
        assert await row_counts(scratch_url) == seeded
        assert await connection.fetchval(column) == 1
        assert await connection.fetchval(
            "SELECT indisvalid FROM pg_index "
            "WHERE indexrelid = 'api_keys_granted_by_key_id_idx'::regclass"
        )
    finally:
        await connection.close()


HISTORY_TABLE_MIGRATION_ID = "2026-12-07T19:14:30:245196"
HISTORY_MIGRATION_ID = "2026-12-07T19:14:40:000000"
HISTORY_TRIGGERS = {
    "workflow_runs_history_created",
    "workflow_runs_history_status",
    "run_step_logs_history_created",
    "run_step_logs_history_status",
    "run_history_append_only",
}


async def history_state(connection: asyncpg.Connection) -> dict[str, Any]:
    return {
        "relkind": await connection.fetchval(
            "SELECT relkind::text FROM pg_class WHERE oid = to_regclass('run_history')"
        ),
        "rows": sorted(
            tuple(row)
            for row in await connection.fetch(
                "SELECT id, run_id, step_position, attempt, from_status, to_status, reason, "
                "actor, recorded_at FROM run_history"
            )
        )
        if await connection.fetchval("SELECT to_regclass('run_history') IS NOT NULL")
        else None,
    }


async def test_stepping_the_history_migrations_back_and_forwards_keeps_every_entry(
    scratch_url: str,
) -> None:
    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    support.piccolo("flowforge", "seed", database_url=scratch_url)
    connection = await asyncpg.connect(scratch_url)
    try:
        built = await inventory(scratch_url)
        assert built["triggers"] >= HISTORY_TRIGGERS
        assert {
            "flowforge_run_history_of_run",
            "flowforge_run_history_of_attempt",
            "flowforge_run_history_guard",
        } <= built["functions"]
        seeded = await history_state(connection)
        assert seeded["relkind"] == "p" and len(seeded["rows"]) > 10
        assert {row[7] for row in seeded["rows"]} == {"cli:seed"}
        counts = await row_counts(scratch_url)

        support.piccolo(
            "migrations",
            "backwards",
            "flowforge",
            f"--migration_id={HISTORY_MIGRATION_ID}",
            "--auto_agree",
            database_url=scratch_url,
        )
        stepped_back = await inventory(scratch_url)
        assert not HISTORY_TRIGGERS & stepped_back["triggers"]
        assert await history_state(connection) == {**seeded, "relkind": "r"}
        # Without the triggers a change leaves no history (and nothing refuses it).
        await connection.execute("UPDATE workflow_runs SET status = status")
        await connection.execute(
            "UPDATE workflow_runs SET status = 'cancelled', finished_at = now() "
            "WHERE status = 'pending'"
        )
        assert (await history_state(connection))["rows"] == seeded["rows"]

        support.piccolo("migrations", "forwards", "flowforge", database_url=scratch_url)
        assert await inventory(scratch_url) == built
        assert await history_state(connection) == seeded
        assert await row_counts(scratch_url) == counts

        # Back past the table itself, then forwards: an empty, working history.
        support.piccolo(
            "migrations",
            "backwards",
            "flowforge",
            f"--migration_id={HISTORY_TABLE_MIGRATION_ID}",
            "--auto_agree",
            database_url=scratch_url,
        )
        assert (await history_state(connection))["relkind"] is None
        support.piccolo("migrations", "forwards", "flowforge", database_url=scratch_url)
        assert await inventory(scratch_url) == built
        run = await connection.fetchval(
            "UPDATE workflow_runs SET status = 'cancelled', finished_at = now() "
            "WHERE id = (SELECT id FROM workflow_runs WHERE status = 'running' LIMIT 1) "
            "RETURNING id"
        )
        assert run is not None
        assert (
            await connection.fetchval(
                "SELECT count(*) FROM run_history WHERE run_id = $1 AND to_status = 'cancelled'",
                run,
            )
            == 1
        )
    finally:
        await connection.close()


PARTITIONING_MIGRATION_ID = "2026-11-30T00:39:50:000000"
# The last migration before time partitions (issue 11: UUIDv7 keys).
BEFORE_PARTITIONING_MIGRATION_ID = "2026-11-30T00:34:16:765662"
RUN_CREATED_AT_MIGRATION_ID = "2026-11-30T00:39:47:879988"


async def partitioned_tables(url: str) -> dict[str, int]:
    """Partitioned tables and their number of partitions."""
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT p.partrelid::regclass::text AS name, "
            "(SELECT count(*) FROM pg_inherits i WHERE i.inhparent = p.partrelid) AS n "
            "FROM pg_partitioned_table p"
        )
    finally:
        await connection.close()
    # run_history is born partitioned (its own migration, tested apart): these
    # are the tables the partitioning migration converts.
    return {row["name"]: row["n"] for row in rows if row["name"] != "run_history"}


async def table_rows(url: str, table: str) -> list[tuple[Any, ...]]:
    """Every row of `table` (all columns but the partition key the migration
    adds, and the run's workflow version issue 17's migrations add), in a stable
    order: the migration must move rows, not change them."""
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(f"SELECT * FROM {table} ORDER BY id")
    finally:
        await connection.close()
    return [tuple(v for k, v in row.items() if k not in LATER_COLUMNS) for row in rows]


# Columns that migrations after the snapshot add: the partition key, and the run
# queue's (issue 18; constant defaults or NULL on every existing row).
LATER_COLUMNS = frozenset(
    {
        "run_created_at",
        "workflow_version",
        "priority",
        "not_before",
        "next_attempt_at",
        "claimed_by",
        "claims",
    }
)


async def migrate_before_partitioning(url: str) -> None:
    for app in ("user", "session_auth"):
        support.piccolo("migrations", "forwards", app, database_url=url)
    support.piccolo(
        "migrations",
        "forwards",
        "flowforge",
        f"--migration_id={BEFORE_PARTITIONING_MIGRATION_ID}",
        database_url=url,
    )


async def seed_before_partitioning(url: str, runs: int = 21) -> None:
    """Runs every 9 days back over ~180 days, 2 step logs each (without
    run_created_at, as written before the column), one event per run."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            f"""
            INSERT INTO users (email, display_name) VALUES ('m@example.com', 'M');
            INSERT INTO workflows (owner_id, name) SELECT id, 'w' FROM users;
            INSERT INTO workflow_runs (workflow_id, status, created_at, started_at, finished_at)
            SELECT w.id, 'completed', t, t, t
            FROM workflows w, generate_series(0, {runs - 1}) AS g,
                LATERAL (SELECT now() - (g % 21) * interval '9 days' - g * interval '1 ms') AS x(t);
            INSERT INTO run_step_logs (run_id, step_position, step_name, status, started_at,
                finished_at)
            SELECT id, p, 's', 'completed', started_at, finished_at
            FROM workflow_runs, generate_series(0, 1) AS p;
            INSERT INTO outbox (aggregate_type, aggregate_id, event_type, created_at, published_at)
            SELECT 'workflow_run', id, 'run.created', created_at, finished_at FROM workflow_runs;
            """
        )
    finally:
        await connection.close()


async def add_run_created_at(url: str) -> None:
    """The migration before the partitioning one: the nullable column."""
    support.piccolo(
        "migrations",
        "forwards",
        "flowforge",
        f"--migration_id={RUN_CREATED_AT_MIGRATION_ID}",
        database_url=url,
    )


async def contents(url: str) -> dict[str, list[tuple[Any, ...]]]:
    return {t: await table_rows(url, t) for t in ("workflow_runs", "outbox", "run_step_logs")}


async def relfilenodes(url: str, names: list[str]) -> dict[str, int]:
    """The storage of each relation: a rewrite or rebuild gives it a new one."""
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT n, pg_relation_filenode(to_regclass(n))::bigint AS f FROM unnest($1::text[]) n",
            names,
        )
    finally:
        await connection.close()
    return {row["n"]: row["f"] for row in rows}


# Relations that exist before the migration and must be adopted, not rebuilt:
# the tables themselves and their indexes the partitioned tables keep.
ADOPTED = {
    "outbox": "outbox_legacy",
    "outbox_claim_idx": "outbox_legacy_claim_idx",
    "outbox_aggregate_unpublished_idx": "outbox_legacy_aggregate_unpublished_idx",
    "outbox_published_at_idx": "outbox_legacy_published_at_idx",
    "outbox_dead_lettered_idx": "outbox_legacy_dead_lettered_idx",
    "run_step_logs": "run_step_logs_legacy",
    "run_step_logs_step_id_idx": "run_step_logs_legacy_step_id_idx",
}


def migration_steps(output: str) -> dict[str, float]:
    """The steps the partitioning migration printed, with their seconds."""
    return {
        match[1]: float(match[2])
        for match in re.finditer(r"\[partitioning\] (.+?): ([0-9.]+) s$", output, re.MULTILINE)
    }


# Issue 18: the run queue's columns, CHECKs (NOT VALID, then VALIDATE) and due index.
QUEUE_COLUMNS_MIGRATION_ID = "2026-12-07T20:30:00:000000"
QUEUE_CHECKS_MIGRATION_ID = "2026-12-07T20:30:20:000000"
QUEUE_CONSTRAINTS = {
    "workflow_runs_priority_range",
    "workflow_runs_retry_has_due_time",
    "workflow_runs_claims_non_negative",
    "workflows_max_concurrency_positive",
    "workflows_queue_not_blank",
    "workflows_concurrency_limit_id_fkey",
}


async def test_stepping_the_queue_migrations_back_and_forwards_keeps_every_run(
    scratch_url: str,
) -> None:
    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    support.piccolo("flowforge", "seed", database_url=scratch_url)
    tables = [table for table in support.APP_TABLES if table != "concurrency_limits"]
    connection = await asyncpg.connect(scratch_url)
    try:

        async def counts() -> dict[str, int]:
            return {t: await connection.fetchval(f"SELECT count(*) FROM {t}") for t in tables}

        seeded = await counts()
        built = await inventory(scratch_url)
        assert built["constraints"] >= QUEUE_CONSTRAINTS
        assert "workflow_runs_due_idx" in built["indexes"]
        invalid = await connection.fetchval(
            "SELECT count(*) FROM pg_constraint WHERE NOT convalidated"
        )
        assert invalid == 0  # every NOT VALID constraint was validated
        # A run awaiting a retry cannot be represented before the queue: stepping
        # back refuses (and changes nothing) until it is dealt with.
        await connection.execute(
            "UPDATE workflow_runs SET status = 'awaiting_retry', next_attempt_at = now() "
            "WHERE id = (SELECT id FROM workflow_runs WHERE status = 'running' LIMIT 1)"
        )
        support.piccolo(
            "migrations", "backwards", "flowforge",
            f"--migration_id={QUEUE_CHECKS_MIGRATION_ID}", "--auto_agree",
            database_url=scratch_url, check=False,
        )  # fmt: skip
        refused = await inventory(scratch_url)
        assert refused["constraints"] >= QUEUE_CONSTRAINTS  # the CHECKs step stayed
        assert (
            await connection.fetchval(
                "SELECT count(*) FROM workflow_runs WHERE status = 'awaiting_retry'"
            )
            == 1
        )
        await connection.execute(
            "UPDATE workflow_runs SET status = 'running', next_attempt_at = NULL "
            "WHERE status = 'awaiting_retry'"
        )
        support.piccolo(
            "migrations", "backwards", "flowforge",
            f"--migration_id={QUEUE_COLUMNS_MIGRATION_ID}", "--auto_agree",
            database_url=scratch_url,
        )  # fmt: skip
        stepped_back = await inventory(scratch_url)
        assert not QUEUE_CONSTRAINTS & stepped_back["constraints"]
        assert "workflow_runs_due_idx" not in stepped_back["indexes"]
        assert "concurrency_limits" not in stepped_back["tables"]
        # run_history recorded the two status changes above (to awaiting_retry
        # and back): two rows more than seeded, kept through the steps.
        changed = {**seeded, "run_history": seeded["run_history"] + 2}
        assert await counts() == changed
        support.piccolo("migrations", "forwards", "flowforge", database_url=scratch_url)
        assert await inventory(scratch_url) == built
        assert await counts() == changed
    finally:
        await connection.close()


async def test_the_partitioning_migration_keeps_every_row_and_rebuilds_nothing(
    scratch_url: str,
) -> None:
    """Seeded at the schema before time partitions, converted, stepped back and
    forwards again: the same rows every time; the tables and their indexes are
    adopted (same storage), not copied or rebuilt."""
    await migrate_before_partitioning(scratch_url)
    await seed_before_partitioning(scratch_url)
    before = await contents(scratch_url)
    counts = await row_counts(scratch_url)
    assert counts["run_step_logs"] == 42 and counts["outbox"] == 21
    storage = await relfilenodes(scratch_url, list(ADOPTED))

    result = support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    steps = migration_steps(result.stdout)
    assert "outbox: swap to partitioned (exclusive)" in steps
    assert "run_step_logs: swap to partitioned (exclusive)" in steps
    assert await relfilenodes(scratch_url, list(ADOPTED.values())) == {
        ADOPTED[name]: node for name, node in storage.items()
    }
    converted = await partitioned_tables(scratch_url)
    # The legacy partition, the periods from the cutoff on, the default partition.
    assert converted["outbox"] >= 3 and converted["run_step_logs"] >= 3
    assert await row_counts(scratch_url) == counts
    assert await contents(scratch_url) == before
    connection = await asyncpg.connect(scratch_url)
    try:
        # Every step log took its run's created_at; every old row is in the legacy partition.
        assert not await connection.fetchval(
            "SELECT count(*) FROM run_step_logs l JOIN workflow_runs r ON r.id = l.run_id "
            "WHERE l.run_created_at IS DISTINCT FROM r.created_at"
        )
        for table in ("outbox", "run_step_logs"):
            assert (
                await connection.fetchval(
                    f"SELECT count(*) FROM {table} WHERE tableoid = '{table}_legacy'::regclass"
                )
                == counts[table]
            )
            bound = await connection.fetchval(
                "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = $1",
                f"{table}_legacy",
            )
            assert bound.startswith("FOR VALUES FROM (MINVALUE) TO (")
        # The adopted keys are the legacy partition's, valid and attached.
        assert not await connection.fetchval(
            "SELECT count(*) FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
            "WHERE x.indrelid IN ('outbox_legacy'::regclass, 'run_step_logs_legacy'::regclass) "
            "AND (NOT x.indisvalid OR NOT c.relispartition)"
        )
    finally:
        await connection.close()
    await constraints_hold(scratch_url)
    built = await inventory(scratch_url)

    result = support.piccolo(
        "migrations",
        "backwards",
        "flowforge",
        f"--migration_id={RUN_CREATED_AT_MIGRATION_ID}",
        "--auto_agree",
        database_url=scratch_url,
    )
    assert "outbox: swap back to plain (exclusive)" in migration_steps(result.stdout)
    assert await partitioned_tables(scratch_url) == {}
    counts = await row_counts(scratch_url)  # constraints_hold() added and removed some
    after_check = await contents(scratch_url)
    assert "workflow_runs_id_created_at_key" not in (await inventory(scratch_url))["constraints"]
    # Back in place: the same storage again.
    assert await relfilenodes(scratch_url, list(ADOPTED)) == storage

    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    assert await inventory(scratch_url) == built
    assert await row_counts(scratch_url) == counts
    assert await contents(scratch_url) == after_check
    await constraints_hold(scratch_url)


async def constraints_hold(url: str) -> None:
    """On the legacy partition and on a new one: one log per run + step + attempt
    (reported as the table's constraint), the composite foreign key (a log must
    carry its run's created_at; deleting the run deletes its logs), the CHECKs."""
    from flowforge.core.errors import parent_constraint

    connection = await asyncpg.connect(url)
    try:
        old = await connection.fetchrow(
            "SELECT run_id, run_created_at FROM run_step_logs_legacy LIMIT 1"
        )
        workflow = await connection.fetchval("SELECT id FROM workflows LIMIT 1")
        cutoff = await connection.fetchval(
            "SELECT (regexp_match(pg_get_expr(relpartbound, oid), 'TO \\(''([^'']+)''\\)'))[1]"
            "::timestamptz FROM pg_class WHERE relname = 'run_step_logs_legacy'"
        )
        new = await connection.fetchrow(
            "INSERT INTO workflow_runs (workflow_id, status, created_at) "
            "VALUES ($1, 'pending', $2::timestamptz + interval '1 day') RETURNING id AS run_id, "
            "created_at AS run_created_at",
            workflow,
            cutoff,
        )
        await connection.execute(
            "INSERT INTO run_step_logs (run_id, run_created_at, step_position, step_name) "
            "VALUES ($1, $2, 0, 's')",
            new["run_id"],
            new["run_created_at"],
        )
        for run, partition in ((old, "run_step_logs_legacy"), (new, None)):
            where = await connection.fetchval(
                "SELECT tableoid::regclass::text FROM run_step_logs WHERE run_id = $1 LIMIT 1",
                run["run_id"],
            )
            if partition:
                assert where == partition
            else:
                assert where.startswith("run_step_logs_p"), where
            with pytest.raises(asyncpg.UniqueViolationError) as unique:
                await connection.execute(
                    "INSERT INTO run_step_logs (run_id, run_created_at, step_position, step_name) "
                    "VALUES ($1, $2, 0, 's')",
                    run["run_id"],
                    run["run_created_at"],
                )
            assert (
                parent_constraint(unique.value.constraint_name, unique.value.table_name)
                == "run_step_logs_run_step_attempt_key"
            )
            with pytest.raises(asyncpg.ForeignKeyViolationError) as foreign:
                await connection.execute(
                    "INSERT INTO run_step_logs (run_id, run_created_at, step_position, step_name) "
                    "VALUES ($1, $2::timestamptz - interval '40 days', 0, 's')",
                    run["run_id"],
                    run["run_created_at"],
                )
            assert foreign.value.constraint_name == "run_step_logs_run_id_fkey"
            with pytest.raises(asyncpg.CheckViolationError):
                await connection.execute(
                    "INSERT INTO run_step_logs (run_id, run_created_at, step_position, step_name, "
                    "attempt) VALUES ($1, $2, 7, 's', 0)",
                    run["run_id"],
                    run["run_created_at"],
                )
            await connection.execute("DELETE FROM workflow_runs WHERE id = $1", run["run_id"])
            assert not await connection.fetchval(
                "SELECT count(*) FROM run_step_logs WHERE run_id = $1", run["run_id"]
            )
        event = await connection.fetchrow("SELECT * FROM outbox_legacy LIMIT 1")
        with pytest.raises(asyncpg.UniqueViolationError) as unique:
            await connection.execute(
                "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, created_at) "
                "VALUES ($1, 'workflow_run', $2, 'run.created', $3)",
                event["id"],
                event["aggregate_id"],
                event["created_at"],
            )
        assert parent_constraint(unique.value.constraint_name, unique.value.table_name) == (
            "outbox_pkey"
        )
    finally:
        await connection.close()


async def test_a_fresh_install_has_no_legacy_partition(scratch_url: str) -> None:
    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    connection = await asyncpg.connect(scratch_url)
    try:
        assert not await connection.fetchval(
            "SELECT count(*) FROM pg_class WHERE relname LIKE '%\\_legacy%'"
        )
        # Today (and yesterday) have their own partitions, as maintenance keeps them.
        assert await connection.fetchval(
            "SELECT count(*) FROM pg_class WHERE relname = "
            "'outbox_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')"
        )
    finally:
        await connection.close()


async def test_a_concurrent_writer_is_never_blocked_for_long(scratch_url: str) -> None:
    """While the migration converts (and steps back) tables of 100k+ rows, a
    writer keeps logging steps and recording events: none of its transactions
    waits long, and none of its rows is lost."""
    await migrate_before_partitioning(scratch_url)
    await seed_before_partitioning(scratch_url, runs=60_000)
    # The column the writer (today's code) fills; the old rows have it NULL.
    await add_run_created_at(scratch_url)
    counts = await row_counts(scratch_url)
    assert counts["run_step_logs"] == 120_000

    stalls: dict[str, float] = {}
    written = {"workflow_runs": 0, "run_step_logs": 0, "outbox": 0}
    for direction in ("forwards", "backwards"):
        args = (
            ["forwards", "all"]
            if direction == "forwards"
            else [
                "backwards",
                "flowforge",
                f"--migration_id={PARTITIONING_MIGRATION_ID}",
                "--auto_agree",
            ]
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "piccolo.main", "migrations", *args,
            cwd=support.REPO_ROOT, env={**os.environ, "DATABASE_URL": scratch_url},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output = asyncio.ensure_future(process.communicate())
        writer = await asyncpg.connect(scratch_url)
        latencies: list[float] = []
        try:
            workflow = await writer.fetchval("SELECT id FROM workflows LIMIT 1")
            while not output.done():
                started = time.perf_counter()
                async with writer.transaction():
                    run = await writer.fetchrow(
                        "INSERT INTO workflow_runs (workflow_id, status, started_at) "
                        "VALUES ($1, 'running', now()) RETURNING id, created_at",
                        workflow,
                    )
                    await writer.execute(
                        "INSERT INTO run_step_logs (run_id, run_created_at, step_position, "
                        "step_name, status, started_at) VALUES ($1, $2, 0, 's', 'running', now())",
                        run["id"],
                        run["created_at"],
                    )
                    await writer.execute(
                        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type) "
                        "VALUES ('workflow_run', $1, 'run.started')",
                        run["id"],
                    )
                latencies.append(time.perf_counter() - started)
                for table in written:
                    written[table] += 1
        finally:
            await writer.close()
        stdout, _ = await output
        text = stdout.decode()
        assert process.returncode == 0, text
        steps = migration_steps(text)
        exclusive = [seconds for step, seconds in steps.items() if "(exclusive)" in step]
        assert exclusive and max(exclusive) < 1.0, steps
        # The writer ran all along, and never waited long: the copy this
        # migration replaced held writes for seconds at this size.
        assert len(latencies) > 20
        stalls[direction] = max(latencies)
        assert stalls[direction] < 1.5, (direction, stalls, steps)
        assert await row_counts(scratch_url) == {
            table: counts[table] + written.get(table, 0) for table in counts
        }
    assert await partitioned_tables(scratch_url) == {}


async def interrupt_in_the_backfill(url: str) -> None:
    """Run forwards and kill it in the backfill (a row lock on the last step log
    holds the backfill up there)."""
    blocker = await asyncpg.connect(url)
    try:
        async with blocker.transaction():
            await blocker.execute(
                "SELECT 1 FROM run_step_logs ORDER BY ctid DESC LIMIT 1 FOR UPDATE"
            )
            await interrupt_migration(url, "\nUPDATE run_step_logs l")
    finally:
        await blocker.close()


async def interrupt_migration(url: str, query_prefix: str) -> str:
    """Run forwards; kill its connection once it waits in `query_prefix`. Its output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "piccolo.main", "migrations", "forwards", "all",
        cwd=support.REPO_ROOT, env={**os.environ, "DATABASE_URL": url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    pid = await support.wait_for_lock_waiter(url, query_prefix)
    admin = await asyncpg.connect(url)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    stdout, _ = await process.communicate()
    assert process.returncode != 0
    return stdout.decode()


async def test_an_interrupted_migration_resumes(scratch_url: str) -> None:
    """Killed in the backfill, then killed while building an index after it:
    each time the next run carries on and ends with every row in place."""
    await migrate_before_partitioning(scratch_url)
    await seed_before_partitioning(scratch_url, runs=2_000)
    await add_run_created_at(scratch_url)
    before = await contents(scratch_url)

    # 1. A row lock on the last step log holds the backfill up: killed there.
    await interrupt_in_the_backfill(scratch_url)
    connection = await asyncpg.connect(scratch_url)
    try:
        assert await connection.fetchval(
            "SELECT count(*) FROM run_step_logs WHERE run_created_at IS NULL"
        )
        assert await partitioned_tables(scratch_url) == {"outbox": await connection.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'outbox'::regclass"
        )}  # fmt: skip

        # 2. An old snapshot holds the concurrent index build up: killed there,
        # after the backfill, leaving an INVALID index behind.
        async with connection.transaction(isolation="repeatable_read"):
            await connection.fetchval("SELECT 1")
            await interrupt_migration(
                scratch_url, "CREATE UNIQUE INDEX CONCURRENTLY run_step_logs_legacy_pkey"
            )
        assert not await connection.fetchval(
            "SELECT count(*) FROM run_step_logs WHERE run_created_at IS NULL"
        )
        assert (
            await connection.fetchval(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = 'run_step_logs_legacy_pkey'::regclass"
            )
            is False
        )
    finally:
        await connection.close()

    # 3. Run again: done, every row in place.
    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    assert set(await partitioned_tables(scratch_url)) == {"outbox", "run_step_logs"}
    assert await contents(scratch_url) == before
    await constraints_hold(scratch_url)


def partitioning_migration() -> Any:
    """The partitioning migration's module: its steps, called one by one."""
    return importlib.import_module("piccolo_migrations.flowforge_2026_11_30t00_39_50_000000")


async def migration_connection(url: str) -> asyncpg.Connection:
    """A connection set up as the migration sets up its own (UTC, no timeouts)."""
    connection = await asyncpg.connect(url)
    await connection.execute("SET TimeZone = 'UTC'")
    return connection


async def test_a_writer_without_run_created_at_works_until_the_swap(scratch_url: str) -> None:
    """A step log written without run_created_at (a release older than the
    column, ad-hoc SQL) while the migration prepares: inserted, or updated before
    the backfill reached it, it gets its run's created_at and passes the range
    CHECK; the swap leaves no trigger or function behind."""
    await migrate_before_partitioning(scratch_url)
    await seed_before_partitioning(scratch_url, runs=200)
    await add_run_created_at(scratch_url)
    migration = partitioning_migration()

    # Killed in the backfill (a row lock on the last step log holds it up):
    # the fill trigger is in place, step logs are still without their key.
    await interrupt_in_the_backfill(scratch_url)
    connection = await migration_connection(scratch_url)
    try:
        # The migration's next step: the range CHECK, NOT VALID.
        await migration._cutoff(connection, migration.STEP_LOGS)
        assert await migration._constraint(
            connection, "run_step_logs", "run_step_logs_legacy_range"
        )
        unfilled = await connection.fetchval(
            "SELECT id FROM run_step_logs WHERE run_created_at IS NULL ORDER BY id LIMIT 1"
        )
        assert unfilled is not None
        run = await connection.fetchrow("SELECT id, created_at FROM workflow_runs LIMIT 1")
        inserted = await connection.fetchval(
            "INSERT INTO run_step_logs (run_id, step_position, step_name, status, started_at) "
            "VALUES ($1, 7, 's', 'running', now()) RETURNING id",
            run["id"],
        )
        await connection.execute(
            "UPDATE run_step_logs SET status = 'failed' WHERE id = $1", unfilled
        )
        filled = await connection.fetch(
            "SELECT l.id, l.run_created_at = r.created_at AS right_key FROM run_step_logs l "
            "JOIN workflow_runs r ON r.id = l.run_id WHERE l.id = ANY($1::uuid[])",
            [inserted, unfilled],
        )
        assert {row["id"]: row["right_key"] for row in filled} == {
            inserted: True,
            unfilled: True,
        }
    finally:
        await connection.close()

    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    assert set(await partitioned_tables(scratch_url)) == {"outbox", "run_step_logs"}
    await constraints_hold(scratch_url)
    left = await inventory(scratch_url)
    assert "flowforge_fill_run_created_at" not in left["functions"]
    assert "run_step_logs_fill_run_created_at" not in left["triggers"]


async def test_a_backfill_batch_that_deadlocks_with_a_writer_is_run_again(
    scratch_url: str,
) -> None:
    """An app transaction holds the last step log and then wants the first, which
    the backfill batch has already updated: PostgreSQL aborts one of the two (the
    backfill, which waited first); the batch is run again and forwards ends."""
    await migrate_before_partitioning(scratch_url)
    await seed_before_partitioning(scratch_url, runs=200)
    await add_run_created_at(scratch_url)
    writer = await asyncpg.connect(scratch_url)
    try:
        first = await writer.fetchval("SELECT id FROM run_step_logs ORDER BY ctid LIMIT 1")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "piccolo.main", "migrations", "forwards", "all",
            cwd=support.REPO_ROOT, env={**os.environ, "DATABASE_URL": scratch_url},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        async with writer.transaction():
            # This side never runs the deadlock check first: the batch is the victim.
            await writer.execute("SET LOCAL deadlock_timeout = '60s'")
            await writer.execute(
                "SELECT 1 FROM run_step_logs ORDER BY ctid DESC LIMIT 1 FOR UPDATE"
            )
            await support.wait_for_lock_waiter(scratch_url, "\nUPDATE run_step_logs l")
            await writer.execute("UPDATE run_step_logs SET status = 'failed' WHERE id = $1", first)
        stdout, _ = await process.communicate()
    finally:
        await writer.close()
    text = stdout.decode()
    assert process.returncode == 0, text
    assert "backfill run_step_logs.run_created_at: conflict with a writer, try 2" in text
    assert set(await partitioned_tables(scratch_url)) == {"outbox", "run_step_logs"}
    await constraints_hold(scratch_url)


async def test_the_swap_refuses_a_cutoff_too_close(scratch_url: str) -> None:
    """A preparation that outlasted its margin: the swap finds the cutoff less
    than SWAP_MARGIN ahead (database clock), rolls back and changes nothing; the
    next run chooses a new cutoff and converts."""
    await migrate_before_partitioning(scratch_url)
    await seed_before_partitioning(scratch_url)
    await add_run_created_at(scratch_url)
    migration = partitioning_migration()
    connection = await migration_connection(scratch_url)
    try:
        await migration._prepare(connection, migration.OUTBOX)
        # As if hours had gone by: the CHECK's cutoff is an hour ahead.
        near = await connection.fetchval("SELECT now() + interval '1 hour'")
        await connection.execute(
            "ALTER TABLE outbox DROP CONSTRAINT outbox_legacy_range; "
            "ALTER TABLE outbox ADD CONSTRAINT outbox_legacy_range "
            f"CHECK (created_at IS NOT NULL AND created_at < '{near.isoformat()}');"
        )
        with pytest.raises(migration.CutoffTooClose):
            async with connection.transaction():
                await migration._swap(connection, migration.OUTBOX, near)
        assert await migration._relkind(connection, "outbox") == "r"
        assert await migration._relkind(connection, "outbox_legacy") is None
    finally:
        await connection.close()

    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    connection = await asyncpg.connect(scratch_url)
    try:
        bound = await connection.fetchval(
            "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = 'outbox_legacy'"
        )
        found = re.search(r"TO \('([^']+)'\)", bound)
        assert found, bound
        cutoff = datetime.datetime.fromisoformat(found[1])
        assert cutoff > near + datetime.timedelta(hours=12), bound
    finally:
        await connection.close()


async def test_a_detached_legacy_table_is_refused_before_any_work(scratch_url: str) -> None:
    """A plain outbox_legacy kept by `partitions --detach` would take the name
    (and its index the name) the swap needs: forwards refuses at once, in one
    line, and changes nothing; an index of that name on another table is no
    reason to skip a build."""
    await migrate_before_partitioning(scratch_url)
    await seed_before_partitioning(scratch_url)
    await add_run_created_at(scratch_url)
    connection = await migration_connection(scratch_url)
    try:
        await connection.execute(
            "CREATE TABLE outbox_legacy (id uuid PRIMARY KEY, created_at timestamptz)"
        )
        result = support.piccolo(
            "migrations", "forwards", "all", database_url=scratch_url, check=False
        )
        assert result.returncode == 2
        assert result.stderr == (
            "\noutbox_legacy exists as a plain table (a detached partition?): "
            "drop or rename it, then run the migration again\n"
        )
        assert await partitioned_tables(scratch_url) == {}
        assert await connection.fetchval(
            "SELECT to_regclass('workflow_runs_id_created_at_key') IS NULL"
        )
        migration = partitioning_migration()
        with pytest.raises(RuntimeError, match="not an index of outbox"):
            await migration._index_concurrently(
                connection, "outbox_legacy_pkey", "outbox", "id, created_at"
            )
        await connection.execute("DROP TABLE outbox_legacy")
    finally:
        await connection.close()
    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    assert set(await partitioned_tables(scratch_url)) == {"outbox", "run_step_logs"}


async def test_backwards_without_auto_agree_and_stdin_fails_cleanly(scratch_url: str) -> None:
    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    result = support.piccolo(
        "migrations",
        "backwards",
        "flowforge",
        "--migration_id=all",
        database_url=scratch_url,
        check=False,
    )
    assert result.returncode != 0
    assert (await inventory(scratch_url))["tables"] == ALL_APP_TABLES


async def alter_statements(app_config: AppConfig) -> list[Any]:
    manager = AutoMigrationManager(auto_input="n")
    found = await manager.get_alter_statements(app_config=app_config)
    return [statement for group in found for statement in group.statements]


async def test_table_classes_match_the_migrations() -> None:
    """Drift: a Table class changed without a matching migration fails here."""
    assert await alter_statements(APP_CONFIG) == []


class DriftedUser(tables.Audited, tables.Table, tablename="users"):
    """`users` with one column more and one constraint renamed: must be detected."""

    email = Varchar(length=320, null=False, default=None)
    display_name = Varchar(length=200, null=False, default=None)
    role = Varchar(length=16, null=False, default="developer")
    is_active = tables.Boolean(default=True, null=False)
    nickname = Varchar(length=50)
    users_email_format = Check(r"email ~ '^[^@\s]+@[^@\s]+$'")
    users_role_is_valid = Check("role IN ('admin', 'developer', 'viewer')")
    users_display_name_not_blank = Check("btrim(display_name) <> ''")


async def test_the_drift_check_detects_a_change() -> None:
    drifted = AppConfig(
        app_name=APP_CONFIG.app_name,
        migrations_folder_path=APP_CONFIG.migrations_folder_path,
        table_classes=[
            DriftedUser if table is tables.User else table for table in APP_CONFIG.table_classes
        ],
    )
    statements = " ".join(str(statement) for statement in await alter_statements(drifted))
    assert "nickname" in statements
    assert "users_role_is_valid" in statements
