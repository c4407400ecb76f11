"""The run queue's columns and the concurrency_limits table (issue 18).

workflows gain queue (DEFAULT 'default'), max_concurrency and
concurrency_limit_id; the next migration adds workflow_runs' columns. One table
under ACCESS EXCLUSIVE per migration (each its own transaction): a writer that
holds one of the two tables and waits for the other (a trigger reads workflows
and inserts into workflow_runs) cannot deadlock with a migration holding both. Every new column is nullable or has a
constant default: a catalog change, no table rewrite. The foreign key of
concurrency_limit_id is validated under the ADD COLUMN's lock by a scan that
finds only NULLs (and workflows is small). The raw step (which Piccolo runs
first, in the same transaction) bounds the wait for the ACCESS EXCLUSIVE
locks. Their CHECK constraints, and the changed status / timestamps CHECKs,
come from the next migrations (NOT VALID, then VALIDATE); the due-runs index is
built CONCURRENTLY after them. Backwards drops the columns and the table.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.base import OnDelete
from piccolo.columns.base import OnUpdate
from piccolo.columns.column_types import ForeignKey
from piccolo.columns.column_types import Integer
from piccolo.columns.column_types import Timestamptz
from piccolo.columns.column_types import UUID
from piccolo.columns.column_types import Varchar
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.columns.defaults.uuid import UUID4
from piccolo.columns.indexes import IndexMethod
from piccolo.constraints import Check
from piccolo.engine import engine_finder
from piccolo.table import Table


class ConcurrencyLimit(Table, tablename="concurrency_limits", schema=None):
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


ID = "2026-12-07T20:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "run queue columns and concurrency_limits (issue 18)"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="flowforge", description=DESCRIPTION)

    async def bounded_lock_wait() -> None:
        engine = engine_finder()
        assert engine is not None
        await engine.run_ddl("SET LOCAL lock_timeout = '5s'")

    manager.add_raw(bounded_lock_wait)

    manager.add_table(
        class_name="ConcurrencyLimit",
        tablename="concurrency_limits",
        schema=None,
        columns=None,
    )

    manager.add_column(
        table_class_name="ConcurrencyLimit",
        tablename="concurrency_limits",
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
        table_class_name="ConcurrencyLimit",
        tablename="concurrency_limits",
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

    manager.add_column(
        table_class_name="ConcurrencyLimit",
        tablename="concurrency_limits",
        column_name="updated_at",
        db_column_name="updated_at",
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

    manager.add_column(
        table_class_name="ConcurrencyLimit",
        tablename="concurrency_limits",
        column_name="name",
        db_column_name="name",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 100,
            "default": None,
            "null": False,
            "primary_key": False,
            "unique": True,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="ConcurrencyLimit",
        tablename="concurrency_limits",
        column_name="max_running",
        db_column_name="max_running",
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

    manager.add_constraint(
        table_class_name="ConcurrencyLimit",
        tablename="concurrency_limits",
        constraint_name="concurrency_limits_max_running_non_negative",
        constraint_class=Check,
        params={"condition": "max_running >= 0"},
        schema=None,
    )

    manager.add_constraint(
        table_class_name="ConcurrencyLimit",
        tablename="concurrency_limits",
        constraint_name="concurrency_limits_name_not_blank",
        constraint_class=Check,
        params={"condition": "btrim(name) <> ''"},
        schema=None,
    )

    manager.add_column(
        table_class_name="Workflow",
        tablename="workflows",
        column_name="concurrency_limit_id",
        db_column_name="concurrency_limit_id",
        column_class_name="ForeignKey",
        column_class=ForeignKey,
        params={
            "references": ConcurrencyLimit,
            "on_delete": OnDelete.restrict,
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
        table_class_name="Workflow",
        tablename="workflows",
        column_name="max_concurrency",
        db_column_name="max_concurrency",
        column_class_name="Integer",
        column_class=Integer,
        params={
            "default": None,
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
        table_class_name="Workflow",
        tablename="workflows",
        column_name="queue",
        db_column_name="queue",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 64,
            "default": "default",
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
