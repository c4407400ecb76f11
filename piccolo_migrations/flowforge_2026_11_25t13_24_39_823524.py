"""Database-side objects that Piccolo's Table classes cannot express.

* ``flowforge_set_updated_at()`` and a BEFORE UPDATE trigger on every table, so
  ``updated_at`` is true for raw SQL as well as ORM updates (Piccolo's
  ``auto_update`` is client-side only).
* ``users_email_lower_key``: email unique case-insensitively.
* Composite and partial indexes for the known query patterns.

Kept apart from the table migration on purpose: ``add_raw`` steps run before a
migration's table operations (piccolo issue #541). Stepping this migration
back and forwards only drops and recreates these objects: no row is touched.
The tables are empty when it first runs, so plain (transactional) CREATE INDEX
is right here; an index added later to a large table needs its own migration
with ``wrap_in_transaction=False`` and ``CREATE INDEX CONCURRENTLY``.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-25T13:24:39:823524"
VERSION = "1.38.0"
DESCRIPTION = "updated_at triggers, case-insensitive email, query-pattern indexes"

TABLES = [
    "users",
    "api_keys",
    "workflows",
    "workflow_steps",
    "workflow_runs",
    "run_step_logs",
    "outbox",
]

FORWARDS = [
    """
    CREATE FUNCTION flowforge_set_updated_at() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        NEW.updated_at := now();
        RETURN NEW;
    END
    $$
    """,
    *[
        # WHEN: an UPDATE that changes nothing does not bump updated_at.
        f"""
        CREATE TRIGGER {table}_set_updated_at
        BEFORE UPDATE ON {table}
        FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*)
        EXECUTE FUNCTION flowforge_set_updated_at()
        """
        for table in TABLES
    ],
    "CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email))",
    # A user's workflows, newest first (keyset pagination on created_at, id).
    "CREATE INDEX workflows_owner_id_created_at_idx ON workflows (owner_id, created_at DESC, id DESC)",
    # A workflow's runs, newest first.
    "CREATE INDEX workflow_runs_workflow_id_created_at_idx ON workflow_runs (workflow_id, created_at DESC, id DESC)",
    # A workflow's runs in one status, newest first.
    "CREATE INDEX workflow_runs_workflow_id_status_created_at_idx ON workflow_runs (workflow_id, status, created_at DESC, id DESC)",
    # All runs in one status, oldest or newest first (dashboards, the reaper).
    "CREATE INDEX workflow_runs_status_created_at_idx ON workflow_runs (status, created_at DESC, id DESC)",
    # Foreign keys with ON DELETE SET NULL: without an index, deleting the
    # parent scans the whole child table. Partial: most rows hold NULL or few values.
    "CREATE INDEX workflow_runs_triggered_by_user_id_idx ON workflow_runs (triggered_by_user_id) WHERE triggered_by_user_id IS NOT NULL",
    "CREATE INDEX run_step_logs_step_id_idx ON run_step_logs (step_id) WHERE step_id IS NOT NULL",
    # Unpublished events in order: the relay's work queue stays small however
    # large the published history grows.
    "CREATE INDEX outbox_unpublished_idx ON outbox (created_at, id) WHERE published_at IS NULL",
]

BACKWARDS = [
    "DROP INDEX IF EXISTS outbox_unpublished_idx",
    "DROP INDEX IF EXISTS run_step_logs_step_id_idx",
    "DROP INDEX IF EXISTS workflow_runs_triggered_by_user_id_idx",
    "DROP INDEX IF EXISTS workflow_runs_status_created_at_idx",
    "DROP INDEX IF EXISTS workflow_runs_workflow_id_status_created_at_idx",
    "DROP INDEX IF EXISTS workflow_runs_workflow_id_created_at_idx",
    "DROP INDEX IF EXISTS workflows_owner_id_created_at_idx",
    "DROP INDEX IF EXISTS users_email_lower_key",
    *[f"DROP TRIGGER IF EXISTS {table}_set_updated_at ON {table}" for table in TABLES],
    "DROP FUNCTION IF EXISTS flowforge_set_updated_at()",
]


async def _run_all(statements: list[str]) -> None:
    engine = engine_finder()
    assert engine is not None
    for statement in statements:
        await engine.run_ddl(statement)


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="flowforge", description=DESCRIPTION)

    async def run() -> None:
        await _run_all(FORWARDS)

    async def run_backwards() -> None:
        await _run_all(BACKWARDS)

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
