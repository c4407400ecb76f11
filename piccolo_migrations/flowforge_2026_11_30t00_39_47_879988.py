"""run_step_logs.run_created_at, nullable: the next migration fills it and partitions by it.

A nullable column without a default changes only the catalog. The raw step
(which Piccolo runs first, in the same transaction) bounds the wait for the
ACCESS EXCLUSIVE lock, so the migration fails instead of queueing every query
behind a long transaction.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Timestamptz
from piccolo.engine import engine_finder
from piccolo.columns.indexes import IndexMethod

ID = "2026-11-30T00:39:47:879988"
VERSION = "1.38.0"
DESCRIPTION = "run_step_logs.run_created_at (nullable until the partitioning migration fills it)"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="flowforge", description=DESCRIPTION)

    async def bounded_lock_wait() -> None:
        engine = engine_finder()
        assert engine is not None
        await engine.run_ddl("SET LOCAL lock_timeout = '5s'")

    manager.add_raw(bounded_lock_wait)

    manager.add_column(
        table_class_name="RunStepLog",
        tablename="run_step_logs",
        column_name="run_created_at",
        db_column_name="run_created_at",
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

    return manager
