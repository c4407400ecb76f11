"""run_history (issue 17): the table, as Piccolo sees it.

Created here plain (an empty new table: no lock on anything else but the
reference from its run_id foreign key to workflow_runs' primary key, a SHARE ROW
EXCLUSIVE lock held for the instant of the CREATE; bounded by lock_timeout).
The next migration (``flowforge_2026_12_07t19_14_40_000000``) replaces it, still
empty, by the table partitioned by month of run_created_at and adds the
triggers that write it; this one exists so that Piccolo's schema snapshot (the
drift test) knows the table and its columns. Backwards drops the table.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from enum import Enum
from flowforge.db.uuid7 import UUID7
from piccolo.columns.base import OnDelete
from piccolo.columns.base import OnUpdate
from piccolo.columns.column_types import ForeignKey
from piccolo.columns.column_types import Integer
from piccolo.columns.column_types import Text
from piccolo.columns.column_types import Timestamptz
from piccolo.columns.column_types import UUID
from piccolo.columns.column_types import Varchar
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.columns.indexes import IndexMethod
from piccolo.constraints import Check
from piccolo.engine import engine_finder
from piccolo.table import Table


class WorkflowRun(Table, tablename="workflow_runs", schema=None):
    id = UUID(
        default=UUID7(),
        null=False,
        primary_key=True,
        unique=False,
        index=False,
        index_method=IndexMethod.btree,
        choices=None,
        db_column_name=None,
        secret=False,
    )


ID = "2026-12-07T19:14:30:245196"
VERSION = "1.38.0"
DESCRIPTION = "run_history (plain; partitioned by the next migration)"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="flowforge", description=DESCRIPTION)

    async def bounded_lock_wait() -> None:
        engine = engine_finder()
        assert engine is not None
        await engine.run_ddl("SET LOCAL lock_timeout = '5s'")

    manager.add_raw(bounded_lock_wait)

    manager.add_table(
        class_name="RunHistory",
        tablename="run_history",
        schema=None,
        columns=None,
    )

    manager.add_column(
        table_class_name="RunHistory",
        tablename="run_history",
        column_name="id",
        db_column_name="id",
        column_class_name="UUID",
        column_class=UUID,
        params={
            "default": UUID7(),
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
        table_class_name="RunHistory",
        tablename="run_history",
        column_name="run_id",
        db_column_name="run_id",
        column_class_name="ForeignKey",
        column_class=ForeignKey,
        params={
            "references": WorkflowRun,
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
        table_class_name="RunHistory",
        tablename="run_history",
        column_name="run_created_at",
        db_column_name="run_created_at",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
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
        table_class_name="RunHistory",
        tablename="run_history",
        column_name="step_log_id",
        db_column_name="step_log_id",
        column_class_name="UUID",
        column_class=UUID,
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
        table_class_name="RunHistory",
        tablename="run_history",
        column_name="step_position",
        db_column_name="step_position",
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
        table_class_name="RunHistory",
        tablename="run_history",
        column_name="attempt",
        db_column_name="attempt",
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
        table_class_name="RunHistory",
        tablename="run_history",
        column_name="from_status",
        db_column_name="from_status",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 16,
            "default": None,
            "null": True,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": Enum(
                "RunStatus",
                {
                    "PENDING": "pending",
                    "RUNNING": "running",
                    "COMPLETED": "completed",
                    "FAILED": "failed",
                    "CANCELLED": "cancelled",
                },
            ),
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="RunHistory",
        tablename="run_history",
        column_name="to_status",
        db_column_name="to_status",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 16,
            "default": None,
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": Enum(
                "RunStatus",
                {
                    "PENDING": "pending",
                    "RUNNING": "running",
                    "COMPLETED": "completed",
                    "FAILED": "failed",
                    "CANCELLED": "cancelled",
                },
            ),
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="RunHistory",
        tablename="run_history",
        column_name="reason",
        db_column_name="reason",
        column_class_name="Text",
        column_class=Text,
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
        table_class_name="RunHistory",
        tablename="run_history",
        column_name="actor",
        db_column_name="actor",
        column_class_name="Text",
        column_class=Text,
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
        table_class_name="RunHistory",
        tablename="run_history",
        column_name="recorded_at",
        db_column_name="recorded_at",
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
        table_class_name="RunHistory",
        tablename="run_history",
        constraint_name="run_history_to_status_valid",
        constraint_class=Check,
        params={
            "condition": "to_status IN ('pending', 'running', 'completed', 'failed', 'cancelled')"
        },
        schema=None,
    )

    manager.add_constraint(
        table_class_name="RunHistory",
        tablename="run_history",
        constraint_name="run_history_from_status_valid",
        constraint_class=Check,
        params={
            "condition": "from_status IS NULL OR from_status IN ('pending', 'running', 'completed', 'failed', 'cancelled')"
        },
        schema=None,
    )

    manager.add_constraint(
        table_class_name="RunHistory",
        tablename="run_history",
        constraint_name="run_history_attempt_complete",
        constraint_class=Check,
        params={
            "condition": "(step_log_id IS NULL AND step_position IS NULL AND attempt IS NULL) OR (step_log_id IS NOT NULL AND step_position IS NOT NULL AND attempt IS NOT NULL)"
        },
        schema=None,
    )

    return manager
