"""The migrations themselves, through the real `piccolo` CLI, on scratch databases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from piccolo.apps.migrations.commands.new import AutoMigrationManager
from piccolo.columns import Varchar
from piccolo.conf.apps import AppConfig
from piccolo.constraints import Check

from flowforge.db import tables
from flowforge.db.piccolo_app import APP_CONFIG
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
    "workflow_steps_workflow_position_key",
    "workflow_runs_workflow_idempotency_key",
    "run_step_logs_run_step_attempt_key",
    "workflow_runs_id_created_at_key",
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


async def row_counts(url: str) -> dict[str, int]:
    connection = await asyncpg.connect(url)
    try:
        return {
            table: await connection.fetchval(f"SELECT count(*) FROM {table}")
            for table in support.APP_TABLES
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
    assert {f"{table}_set_updated_at" for table in support.APP_TABLES} <= built["triggers"]
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
    assert stepped_back["tables"] == built["tables"]
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
    return {row["name"]: row["n"] for row in rows}


async def table_rows(url: str, table: str) -> list[tuple[Any, ...]]:
    """Every row of `table` (all columns but the partition key the migration
    adds), in a stable order: the migration must move rows, not change them."""
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(f"SELECT * FROM {table} ORDER BY id")
    finally:
        await connection.close()
    return [tuple(v for k, v in row.items() if k != "run_created_at") for row in rows]


async def test_the_partitioning_migration_moves_every_row_forwards_and_back(
    scratch_url: str,
) -> None:
    """Seeded at the schema before time partitions, converted, stepped back and
    forwards again: the same rows every time, in partitions or not."""
    for app in ("user", "session_auth"):
        support.piccolo("migrations", "forwards", app, database_url=scratch_url)
    support.piccolo(
        "migrations",
        "forwards",
        "flowforge",
        f"--migration_id={BEFORE_PARTITIONING_MIGRATION_ID}",
        database_url=scratch_url,
    )
    # The seed of that time (step logs without run_created_at), by plain SQL.
    connection = await asyncpg.connect(scratch_url)
    try:
        await connection.execute(
            """
            INSERT INTO users (email, display_name) VALUES ('m@example.com', 'M');
            INSERT INTO workflows (owner_id, name) SELECT id, 'w' FROM users;
            INSERT INTO workflow_runs (workflow_id, status, created_at, started_at, finished_at)
            SELECT w.id, 'completed', now() - g * interval '9 days',
                now() - g * interval '9 days', now() - g * interval '9 days'
            FROM workflows w, generate_series(0, 20) AS g;
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
    before = {t: await table_rows(scratch_url, t) for t in ("outbox", "run_step_logs")}
    counts = await row_counts(scratch_url)
    assert counts["run_step_logs"] == 42 and counts["outbox"] == 21

    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    converted = await partitioned_tables(scratch_url)
    # 21 days of events over ~180 days, plus the days ahead; logs by month.
    assert converted["outbox"] > 21 and converted["run_step_logs"] >= 7
    assert await row_counts(scratch_url) == counts
    assert {t: await table_rows(scratch_url, t) for t in before} == before
    connection = await asyncpg.connect(scratch_url)
    try:
        # Every step log took its run's created_at, and nothing is in the default partitions.
        assert not await connection.fetchval(
            "SELECT count(*) FROM run_step_logs l JOIN workflow_runs r ON r.id = l.run_id "
            "WHERE l.run_created_at <> r.created_at"
        )
        assert not await connection.fetchval("SELECT count(*) FROM outbox_default")
        assert not await connection.fetchval("SELECT count(*) FROM run_step_logs_default")
    finally:
        await connection.close()
    built = await inventory(scratch_url)

    support.piccolo(
        "migrations",
        "backwards",
        "flowforge",
        f"--migration_id={RUN_CREATED_AT_MIGRATION_ID}",
        "--auto_agree",
        database_url=scratch_url,
    )
    assert await partitioned_tables(scratch_url) == {}
    assert await row_counts(scratch_url) == counts
    assert {t: await table_rows(scratch_url, t) for t in before} == before
    assert "workflow_runs_id_created_at_key" not in (await inventory(scratch_url))["constraints"]

    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    assert await inventory(scratch_url) == built
    assert await row_counts(scratch_url) == counts
    assert {t: await table_rows(scratch_url, t) for t in before} == before


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
