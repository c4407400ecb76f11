"""Time-ordered keys (``DEFAULT uuidv7()``) for workflow_runs, run_step_logs, outbox.

Only the column default changes (``ALTER COLUMN ... SET DEFAULT``: a catalog
update, no table rewrite, a brief lock); existing rows keep their UUIDv4
keys, which mix freely with the new ones. Backwards restores
``gen_random_uuid()``. Why: benchmarks/uuid_keys.py, docs/decisions/10-uuidv7-keys.md.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import UUID
from piccolo.columns.defaults.uuid import UUID4

from flowforge.db.uuid7 import UUID7

ID = "2026-11-30T00:34:16:765662"
VERSION = "1.38.0"
DESCRIPTION = "time-ordered keys for runs, step logs and outbox"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="flowforge", description=DESCRIPTION)

    manager.alter_column(
        table_class_name="WorkflowRun",
        tablename="workflow_runs",
        column_name="id",
        db_column_name="id",
        params={"default": UUID7()},
        old_params={"default": UUID4()},
        column_class=UUID,
        old_column_class=UUID,
        schema=None,
    )

    manager.alter_column(
        table_class_name="RunStepLog",
        tablename="run_step_logs",
        column_name="id",
        db_column_name="id",
        params={"default": UUID7()},
        old_params={"default": UUID4()},
        column_class=UUID,
        old_column_class=UUID,
        schema=None,
    )

    manager.alter_column(
        table_class_name="Outbox",
        tablename="outbox",
        column_name="id",
        db_column_name="id",
        params={"default": UUID7()},
        old_params={"default": UUID4()},
        column_class=UUID,
        old_column_class=UUID,
        schema=None,
    )

    return manager
