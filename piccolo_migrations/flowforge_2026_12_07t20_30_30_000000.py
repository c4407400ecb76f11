"""Validate the run queue's CHECK constraints (issue 18).

The previous migration added them NOT VALID; ``VALIDATE CONSTRAINT`` scans the
existing rows under SHARE UPDATE EXCLUSIVE, which does not block reads or
writes, so a populated workflow_runs keeps serving while it runs. Its own
transaction: the short ACCESS EXCLUSIVE lock of the previous step is already
released. Backwards: nothing to undo (a constraint cannot be un-validated; the
previous migration's backwards replaces or drops them).
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-07T20:30:30:000000"
VERSION = "1.38.0"
DESCRIPTION = "validate the run queue CHECK constraints (issue 18)"

VALIDATE = {
    "workflow_runs": [
        "workflow_runs_status_valid",
        "workflow_runs_timestamps_match_status",
        "workflow_runs_priority_range",
        "workflow_runs_retry_has_due_time",
        "workflow_runs_claims_non_negative",
    ],
    "workflows": ["workflows_max_concurrency_positive", "workflows_queue_not_blank"],
    "api_keys": ["api_keys_scopes_valid"],
    "run_history": ["run_history_to_status_valid", "run_history_from_status_valid"],
}


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="flowforge", description=DESCRIPTION)

    async def run() -> None:
        engine = engine_finder()
        assert engine is not None
        await engine.run_ddl("SET LOCAL lock_timeout = '5s'")
        for table, names in VALIDATE.items():
            for name in names:
                await engine.run_ddl(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")

    async def run_backwards() -> None:
        return None

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
