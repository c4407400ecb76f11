"""Workflow versions, step 1 of 3 (issue 17; docs/decisions/15-workflow-versions.md): expand.

Creates ``workflow_versions`` (empty) and adds ``workflows.version``,
``workflows.revision``, ``workflow_steps.version`` and
``workflow_runs.workflow_version``, each ``INTEGER NOT NULL DEFAULT 1``: a
constant default is a catalog change in PostgreSQL >= 11 (no rewrite, no scan),
and it pins every existing step and run to version 1 at once, so no run row is
ever updated by the backfill. The raw step (run first, in this transaction)
bounds the wait for the ACCESS EXCLUSIVE locks. The release before this one
keeps working on the result (it never names the new columns). The next
migration fills version 1 of each workflow and adds the keys; the one after
drops the old step-position key.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from enum import Enum
from piccolo.columns.base import OnDelete
from piccolo.columns.base import OnUpdate
from piccolo.columns.column_types import ForeignKey
from piccolo.columns.column_types import Integer
from piccolo.columns.column_types import JSONB
from piccolo.columns.column_types import Timestamptz
from piccolo.columns.column_types import UUID
from piccolo.columns.column_types import Varchar
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.columns.defaults.uuid import UUID4
from piccolo.columns.indexes import IndexMethod
from piccolo.constraints import Check
from piccolo.constraints import Unique
from piccolo.engine import engine_finder
from piccolo.table import Table

# Every lock this migration needs, taken up front, each try bounded by
# LOCK_TRY (well under deadlock_timeout, 1 s by default) and retried: taken one
# ALTER at a time, they deadlocked with a writer that inserts a run (it holds
# workflow_runs and then needs workflows for the foreign-key check; found by
# tests/test_migrations.py's concurrent writer). A try that times out releases
# what it took (ROLLBACK TO SAVEPOINT), so writers wait at most LOCK_TRY on it.
LOCKS = [
    "LOCK TABLE workflow_runs, workflow_steps, workflows IN ACCESS EXCLUSIVE MODE",
    # The foreign keys of the new table.
    "LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE",
]
# Backwards needs users too: DROP TABLE workflow_versions drops its foreign key
# to users, and PostgreSQL takes ACCESS EXCLUSIVE on the referenced table to
# drop the key's triggers there. Left to the DROP TABLE, that wait ran under the
# 5 s timeout while this migration held the tables below, behind requests that
# had read users (every request's authentication joins it) and were queued on
# workflow_runs behind this migration: a deadlock, broken only by
# deadlock_timeout (1 s), with a failed request or a failed migration
# (benchmarks.migrations at 1M runs: 0.92-0.95 s of ACCESS EXCLUSIVE, requests
# stalled 1.0-1.1 s; the statements themselves take ~15-25 ms). Taken first, in
# the bounded try, it is waited for while this migration holds nothing (the
# requests that read users finish), and a try that still meets a cycle gives up
# after LOCK_TRY, well before any request's deadlock check.
BACKWARDS_LOCKS = [
    "LOCK TABLE users IN ACCESS EXCLUSIVE MODE",
    "LOCK TABLE workflow_runs, workflow_steps, workflow_versions, workflows "
    "IN ACCESS EXCLUSIVE MODE",
]
LOCK_TRY = "100ms"
LOCK_TRIES = 100


async def take_locks(engine, statements) -> None:
    import asyncio

    import asyncpg

    await engine.run_ddl(f"SET LOCAL lock_timeout = '{LOCK_TRY}'")
    for attempt in range(LOCK_TRIES):
        await engine.run_ddl("SAVEPOINT flowforge_locks")
        try:
            for statement in statements:
                await engine.run_ddl(statement)
        except asyncpg.LockNotAvailableError:
            await engine.run_ddl("ROLLBACK TO SAVEPOINT flowforge_locks")
            await asyncio.sleep(min(0.05 * (attempt + 1), 1.0))
        else:
            await engine.run_ddl("RELEASE SAVEPOINT flowforge_locks")
            return
    raise RuntimeError(f"could not take the migration's locks in {LOCK_TRIES} tries of {LOCK_TRY}")


CLEAN_UP_LATER = [
    "DROP TRIGGER IF EXISTS workflows_first_version ON workflows",
    "DROP FUNCTION IF EXISTS flowforge_workflow_first_version()",
    "DROP TRIGGER IF EXISTS workflow_versions_immutable ON workflow_versions",
    "DROP FUNCTION IF EXISTS flowforge_workflow_version_immutable()",
    "ALTER TABLE workflow_runs DROP CONSTRAINT IF EXISTS workflow_runs_workflow_version_fkey",
    "ALTER TABLE workflow_steps DROP CONSTRAINT IF EXISTS workflow_steps_workflow_version_fkey",
    "DROP INDEX IF EXISTS workflow_steps_workflow_version_position_key",
]


class User(Table, tablename="users", schema=None):
    id = UUID(
        default=UUID4(),
        null=False,
        primary_key=True,
        unique=False,
        index=False,
        index_method=IndexMethod.btree,
        choices=None,
        db_column_name=None,
        secret=False,
    )


class Workflow(Table, tablename="workflows", schema=None):
    id = UUID(
        default=UUID4(),
        null=False,
        primary_key=True,
        unique=False,
        index=False,
        index_method=IndexMethod.btree,
        choices=None,
        db_column_name=None,
        secret=False,
    )


ID = "2026-12-07T19:14:47:188500"
VERSION = "1.38.0"
DESCRIPTION = "workflow versions: the table and the version columns (expand)"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="flowforge", description=DESCRIPTION)

    async def bounded_lock_wait() -> None:
        engine = engine_finder()
        assert engine is not None
        await take_locks(engine, LOCKS)
        await engine.run_ddl("SET LOCAL lock_timeout = '5s'")

    async def drop_later_objects() -> None:
        # Backwards: objects of the next migration that a forwards run which
        # failed part-way (so not recorded, so not stepped back) may have left.
        # The trigger on workflows would otherwise outlive workflow_versions and
        # fail every insert of a workflow.
        engine = engine_finder()
        assert engine is not None
        await take_locks(engine, BACKWARDS_LOCKS)
        await engine.run_ddl("SET LOCAL lock_timeout = '5s'")
        for statement in CLEAN_UP_LATER:
            await engine.run_ddl(statement)

    manager.add_raw(bounded_lock_wait)
    manager.add_raw_backwards(drop_later_objects)

    manager.add_table(
        class_name="WorkflowVersion",
        tablename="workflow_versions",
        schema=None,
        columns=None,
    )

    manager.add_column(
        table_class_name="WorkflowVersion",
        tablename="workflow_versions",
        column_name="id",
        db_column_name="id",
        column_class_name="UUID",
        column_class=UUID,
        params={
            "default": UUID4(),
            "null": False,
            "primary_key": True,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="WorkflowVersion",
        tablename="workflow_versions",
        column_name="workflow_id",
        db_column_name="workflow_id",
        column_class_name="ForeignKey",
        column_class=ForeignKey,
        params={
            "references": Workflow,
            "on_delete": OnDelete.cascade,
            "on_update": OnUpdate.cascade,
            "target_column": None,
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="WorkflowVersion",
        tablename="workflow_versions",
        column_name="version",
        db_column_name="version",
        column_class_name="Integer",
        column_class=Integer,
        params={
            "default": None,
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="WorkflowVersion",
        tablename="workflow_versions",
        column_name="trigger_type",
        db_column_name="trigger_type",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 16,
            "default": "manual",
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": Enum(
                "TriggerType",
                {
                    "MANUAL": "manual",
                    "SCHEDULE": "schedule",
                    "WEBHOOK": "webhook",
                    "EVENT": "event",
                },
            ),
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="WorkflowVersion",
        tablename="workflow_versions",
        column_name="trigger_config",
        db_column_name="trigger_config",
        column_class_name="JSONB",
        column_class=JSONB,
        params={
            "default": "{}",
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="WorkflowVersion",
        tablename="workflow_versions",
        column_name="created_by_user_id",
        db_column_name="created_by_user_id",
        column_class_name="ForeignKey",
        column_class=ForeignKey,
        params={
            "references": User,
            "on_delete": OnDelete.set_null,
            "on_update": OnUpdate.cascade,
            "target_column": None,
            "null": True,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="WorkflowVersion",
        tablename="workflow_versions",
        column_name="created_at",
        db_column_name="created_at",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
        params={
            "default": TimestamptzNow(),
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_constraint(
        table_class_name="WorkflowVersion",
        tablename="workflow_versions",
        constraint_name="workflow_versions_workflow_version_key",
        constraint_class=Unique,
        params={"columns": ["workflow_id", "version"], "nulls_distinct": True},
        schema=None,
    )

    manager.add_constraint(
        table_class_name="WorkflowVersion",
        tablename="workflow_versions",
        constraint_name="workflow_versions_version_positive",
        constraint_class=Check,
        params={"condition": "version >= 1"},
        schema=None,
    )

    manager.add_constraint(
        table_class_name="WorkflowVersion",
        tablename="workflow_versions",
        constraint_name="workflow_versions_trigger_type_valid",
        constraint_class=Check,
        params={"condition": "trigger_type IN ('manual', 'schedule', 'webhook', 'event')"},
        schema=None,
    )

    manager.add_constraint(
        table_class_name="WorkflowVersion",
        tablename="workflow_versions",
        constraint_name="workflow_versions_trigger_config_object",
        constraint_class=Check,
        params={"condition": "jsonb_typeof(trigger_config) = 'object'"},
        schema=None,
    )

    manager.add_column(
        table_class_name="Workflow",
        tablename="workflows",
        column_name="revision",
        db_column_name="revision",
        column_class_name="Integer",
        column_class=Integer,
        params={
            "default": 1,
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="Workflow",
        tablename="workflows",
        column_name="version",
        db_column_name="version",
        column_class_name="Integer",
        column_class=Integer,
        params={
            "default": 1,
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="WorkflowStep",
        tablename="workflow_steps",
        column_name="version",
        db_column_name="version",
        column_class_name="Integer",
        column_class=Integer,
        params={
            "default": 1,
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="WorkflowRun",
        tablename="workflow_runs",
        column_name="workflow_version",
        db_column_name="workflow_version",
        column_class_name="Integer",
        column_class=Integer,
        params={
            "default": 1,
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    return manager
