"""The run queue's columns on workflow_runs (issue 18).

priority (DEFAULT 0), not_before, next_attempt_at, claimed_by and claims
(DEFAULT 0): nullable or a constant default, so a catalog change, no rewrite of
a table of a million runs. Alone in its transaction (workflow_runs is the only
table it locks; see the previous migration), with the raw step (which Piccolo
runs first, in the same transaction) bounding the wait for the ACCESS EXCLUSIVE
lock. The alter_column steps record the new RunStatus member in Piccolo's state
only (no SQL): for workflow_runs.status, run_step_logs.status and run_history's
from_status and to_status (the history migrations came first; the next
migration widens run_history's CHECKs). Backwards drops the columns.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from enum import Enum
from piccolo.columns.column_types import Integer
from piccolo.columns.column_types import Timestamptz
from piccolo.columns.column_types import Varchar
from piccolo.columns.indexes import IndexMethod
from piccolo.engine import engine_finder

ID = "2026-12-07T20:30:10:000000"
VERSION = "1.38.0"
DESCRIPTION = "run queue columns on workflow_runs (issue 18)"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="flowforge", description=DESCRIPTION)

    async def bounded_lock_wait() -> None:
        engine = engine_finder()
        assert engine is not None
        await engine.run_ddl("SET LOCAL lock_timeout = '5s'")

    manager.add_raw(bounded_lock_wait)

    manager.add_column(
        table_class_name="WorkflowRun",
        tablename="workflow_runs",
        column_name="claimed_by",
        db_column_name="claimed_by",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 200,
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
        table_class_name="WorkflowRun",
        tablename="workflow_runs",
        column_name="claims",
        db_column_name="claims",
        column_class_name="Integer",
        column_class=Integer,
        params={
            "default": 0,
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
        column_name="next_attempt_at",
        db_column_name="next_attempt_at",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
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
        table_class_name="WorkflowRun",
        tablename="workflow_runs",
        column_name="not_before",
        db_column_name="not_before",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
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
        table_class_name="WorkflowRun",
        tablename="workflow_runs",
        column_name="priority",
        db_column_name="priority",
        column_class_name="Integer",
        column_class=Integer,
        params={
            "default": 0,
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

    manager.alter_column(
        table_class_name="WorkflowRun",
        tablename="workflow_runs",
        column_name="status",
        db_column_name="status",
        params={
            "choices": Enum(
                "RunStatus",
                {
                    "PENDING": "pending",
                    "RUNNING": "running",
                    "COMPLETED": "completed",
                    "FAILED": "failed",
                    "CANCELLED": "cancelled",
                    "AWAITING_RETRY": "awaiting_retry",
                },
            )
        },
        old_params={
            "choices": Enum(
                "RunStatus",
                {
                    "PENDING": "pending",
                    "RUNNING": "running",
                    "COMPLETED": "completed",
                    "FAILED": "failed",
                    "CANCELLED": "cancelled",
                },
            )
        },
        column_class=Varchar,
        old_column_class=Varchar,
        schema=None,
    )

    manager.alter_column(
        table_class_name="RunStepLog",
        tablename="run_step_logs",
        column_name="status",
        db_column_name="status",
        params={
            "choices": Enum(
                "RunStatus",
                {
                    "PENDING": "pending",
                    "RUNNING": "running",
                    "COMPLETED": "completed",
                    "FAILED": "failed",
                    "CANCELLED": "cancelled",
                    "AWAITING_RETRY": "awaiting_retry",
                },
            )
        },
        old_params={
            "choices": Enum(
                "RunStatus",
                {
                    "PENDING": "pending",
                    "RUNNING": "running",
                    "COMPLETED": "completed",
                    "FAILED": "failed",
                    "CANCELLED": "cancelled",
                },
            )
        },
        column_class=Varchar,
        old_column_class=Varchar,
        schema=None,
    )

    manager.alter_column(
        table_class_name="RunHistory",
        tablename="run_history",
        column_name="from_status",
        db_column_name="from_status",
        params={
            "choices": Enum(
                "RunStatus",
                {
                    "PENDING": "pending",
                    "RUNNING": "running",
                    "COMPLETED": "completed",
                    "FAILED": "failed",
                    "CANCELLED": "cancelled",
                    "AWAITING_RETRY": "awaiting_retry",
                },
            )
        },
        old_params={
            "choices": Enum(
                "RunStatus",
                {
                    "PENDING": "pending",
                    "RUNNING": "running",
                    "COMPLETED": "completed",
                    "FAILED": "failed",
                    "CANCELLED": "cancelled",
                },
            )
        },
        column_class=Varchar,
        old_column_class=Varchar,
        schema=None,
    )

    manager.alter_column(
        table_class_name="RunHistory",
        tablename="run_history",
        column_name="to_status",
        db_column_name="to_status",
        params={
            "choices": Enum(
                "RunStatus",
                {
                    "PENDING": "pending",
                    "RUNNING": "running",
                    "COMPLETED": "completed",
                    "FAILED": "failed",
                    "CANCELLED": "cancelled",
                    "AWAITING_RETRY": "awaiting_retry",
                },
            )
        },
        old_params={
            "choices": Enum(
                "RunStatus",
                {
                    "PENDING": "pending",
                    "RUNNING": "running",
                    "COMPLETED": "completed",
                    "FAILED": "failed",
                    "CANCELLED": "cancelled",
                },
            )
        },
        column_class=Varchar,
        old_column_class=Varchar,
        schema=None,
    )

    return manager
