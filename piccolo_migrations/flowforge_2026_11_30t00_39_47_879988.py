"""run_step_logs.run_created_at, nullable: the next migration fills it and partitions by it.

A nullable column without a default changes only the catalog. The raw step
(which Piccolo runs first, in the same transaction) bounds the wait for the
ACCESS EXCLUSIVE lock, so the migration fails instead of queueing every query
behind a long transaction.

Backwards first undoes whatever a partitioning forwards (the next migration)
that stopped part-way left behind: a failed forwards is not recorded, so
Piccolo never runs its backwards, and its fill trigger depends on this column
("cannot drop column run_created_at ... trigger depends on it"), its range
CHECK, indexes and a partitioned outbox would outlive the step back. The next
migration's own backwards does that (each step looks first, so on a database
where it never ran or was stepped back it does nothing), on a connection of its
own before this migration's transaction drops the column.
"""

import importlib.util
import sys
from pathlib import Path

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Timestamptz
from piccolo.engine import engine_finder
from piccolo.columns.indexes import IndexMethod

ID = "2026-11-30T00:39:47:879988"
VERSION = "1.38.0"
DESCRIPTION = "run_step_logs.run_created_at (nullable until the partitioning migration fills it)"


PARTITIONING = "flowforge_2026_11_30t00_39_50_000000"


async def undo_a_stopped_partitioning() -> None:
    """The partitioning migration's backwards, loaded from its file (migration
    modules are imported by bare name, or as a package in tests and wheels)."""
    path = Path(__file__).with_name(f"{PARTITIONING}.py")
    spec = importlib.util.spec_from_file_location(f"_{PARTITIONING}_undo", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    await module.run_backwards()


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="flowforge", description=DESCRIPTION)

    async def bounded_lock_wait() -> None:
        engine = engine_finder()
        assert engine is not None
        await engine.run_ddl("SET LOCAL lock_timeout = '5s'")

    manager.add_raw(bounded_lock_wait)
    manager.add_raw_backwards(undo_a_stopped_partitioning)
    manager.add_raw_backwards(bounded_lock_wait)

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
