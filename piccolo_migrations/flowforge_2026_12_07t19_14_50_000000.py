"""Workflow versions, step 2 of 3 (issue 17; docs/decisions/15-workflow-versions.md).

Raw SQL, outside a transaction (``wrap_in_transaction=False``), every step
idempotent so a run that failed or was killed part-way simply runs again:

1. the ``workflows_first_version`` trigger (AFTER INSERT ON workflows) writes
   version 1 of every new workflow, from the row: a workflow never exists
   without its current version, whoever inserts it (the release before this one
   included, while this migration runs);
2. the backfill: version 1 of every existing workflow, reconstructed from its
   current trigger (its current steps and its runs are version 1 already: the
   constant default of the previous migration), in keyset batches of
   ``BATCH_SIZE`` workflows, one transaction each
   (:func:`flowforge.jobs.versions.backfill_first_versions`, also the command
   ``flowforge backfill_versions``). Stops, naming up to 10 workflows, if any
   is left without its current version;
3. the composite foreign keys ``workflow_steps (workflow_id, version)`` and
   ``workflow_runs (workflow_id, workflow_version)`` -> ``workflow_versions
   (workflow_id, version)``, added NOT VALID (a catalog change under a short,
   bounded lock) then VALIDATEd (a scan under SHARE UPDATE EXCLUSIVE, which
   blocks no read or write);
4. ``workflow_steps_workflow_version_position_key`` (UNIQUE (workflow_id,
   version, position)), built CONCURRENTLY; an INVALID leftover of a killed
   build is dropped first;
5. the ``workflow_versions_immutable`` trigger: a version row is never updated.

Backwards removes all of it (IF EXISTS), leaving the rows of
``workflow_versions`` to the previous migration's backwards (which drops the table).
"""

from __future__ import annotations

from typing import Any

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-07T19:14:50:000000"
VERSION = "1.38.0"
DESCRIPTION = "workflow versions: version 1 of every workflow, composite keys, unique steps"

BATCH_SIZE = 1000
LOCK_TIMEOUT = "5s"
# A DDL statement's lock is tried for LOCK_TRY (well under deadlock_timeout, 1 s
# by default) and retried: a writer waits at most that long behind it, and a
# statement that would deadlock with a writer (one that holds workflow_runs and
# needs workflows or workflow_versions for a foreign-key check: found by
# tests/test_migrations.py's concurrent writer) gives way instead.
LOCK_TRY = "100ms"
LOCK_TRIES = 100

FIRST_VERSION_FUNCTION = """
CREATE OR REPLACE FUNCTION flowforge_workflow_first_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- The workflow's owner made its first version.
    INSERT INTO workflow_versions (workflow_id, version, trigger_type, trigger_config,
                                   created_by_user_id, created_at)
    VALUES (NEW.id, NEW.version, NEW.trigger_type, NEW.trigger_config, NEW.owner_id,
            NEW.created_at)
    ON CONFLICT ON CONSTRAINT workflow_versions_workflow_version_key DO NOTHING;
    RETURN NULL;
END $$
"""
FIRST_VERSION_TRIGGER = """
CREATE TRIGGER workflows_first_version AFTER INSERT ON workflows
FOR EACH ROW EXECUTE FUNCTION flowforge_workflow_first_version()
"""
IMMUTABLE_FUNCTION = """
CREATE OR REPLACE FUNCTION flowforge_workflow_version_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a workflow version is immutable: create a new version instead'
        USING ERRCODE = 'integrity_constraint_violation',
              CONSTRAINT = 'workflow_versions_immutable';
END $$
"""
IMMUTABLE_TRIGGER = """
CREATE TRIGGER workflow_versions_immutable BEFORE UPDATE ON workflow_versions
FOR EACH ROW EXECUTE FUNCTION flowforge_workflow_version_immutable()
"""

# (table, constraint, definition)
FOREIGN_KEYS = [
    (
        "workflow_steps",
        "workflow_steps_workflow_version_fkey",
        "FOREIGN KEY (workflow_id, version) REFERENCES workflow_versions (workflow_id, version) "
        "ON DELETE CASCADE",
    ),
    (
        "workflow_runs",
        "workflow_runs_workflow_version_fkey",
        "FOREIGN KEY (workflow_id, workflow_version) "
        "REFERENCES workflow_versions (workflow_id, version) ON DELETE RESTRICT",
    ),
]
STEP_KEY = "workflow_steps_workflow_version_position_key"


async def _connect() -> Any:
    engine = engine_finder()
    assert engine is not None
    connection = await engine.get_new_connection()
    # A migration is not a request: no statement timeout (VALIDATE and the
    # concurrent build scan big tables); every lock wait is bounded.
    await connection.execute("SET statement_timeout = 0")
    await connection.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
    return connection


async def _ddl(connection: Any, *statements: str) -> None:
    """`statements` in one short transaction, its lock waits bounded and retried."""
    import asyncio

    import asyncpg

    for attempt in range(LOCK_TRIES):
        try:
            async with connection.transaction():
                await connection.execute(f"SET LOCAL lock_timeout = '{LOCK_TRY}'")
                for statement in statements:
                    await connection.execute(statement)
            return
        except asyncpg.LockNotAvailableError:
            await asyncio.sleep(min(0.05 * (attempt + 1), 1.0))
    raise RuntimeError(f"could not take the locks of {statements[0]!r} in {LOCK_TRIES} tries")


async def _exists(connection: Any, sql: str, *args: Any) -> bool:
    return bool(await connection.fetchval(f"SELECT EXISTS ({sql})", *args))


async def run_forwards() -> None:
    from flowforge.jobs.versions import backfill_first_versions

    connection = await _connect()
    try:
        # 1. version 1 of new workflows, from now on
        await _ddl(
            connection,
            FIRST_VERSION_FUNCTION,
            "DROP TRIGGER IF EXISTS workflows_first_version ON workflows",
            FIRST_VERSION_TRIGGER,
        )
        # 2. version 1 of the existing ones, batch by batch
        report = await backfill_first_versions(batch_size=BATCH_SIZE)
        if report.missing:
            raise RuntimeError(
                "workflows without their current version after the backfill "
                f"(first {len(report.missing)}): {', '.join(map(str, report.missing))}"
            )
        # 3. composite keys: NOT VALID (short), then VALIDATE (blocks no one)
        for table, name, definition in FOREIGN_KEYS:
            present = await _exists(
                connection, "SELECT 1 FROM pg_constraint WHERE conname = $1", name
            )
            if not present:
                await _ddl(
                    connection, f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition} NOT VALID"
                )
            await connection.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")
        # 4. steps unique per (workflow, version, position), built concurrently
        valid = await _exists(
            connection,
            "SELECT 1 FROM pg_index WHERE indexrelid = to_regclass($1) AND indisvalid",
            STEP_KEY,
        )
        if not valid:
            await connection.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {STEP_KEY}")
            await connection.execute(
                f"CREATE UNIQUE INDEX CONCURRENTLY {STEP_KEY} "
                "ON workflow_steps (workflow_id, version, position)"
            )
        # 5. versions are immutable
        await _ddl(
            connection,
            IMMUTABLE_FUNCTION,
            "DROP TRIGGER IF EXISTS workflow_versions_immutable ON workflow_versions",
            IMMUTABLE_TRIGGER,
        )
    finally:
        await connection.close()


async def run_backwards() -> None:
    connection = await _connect()
    try:
        # One lock at a time: a transaction that holds one table's lock while it
        # waits for another's deadlocks with a writer.
        for statement in (
            "DROP TRIGGER IF EXISTS workflow_versions_immutable ON workflow_versions",
            "DROP FUNCTION IF EXISTS flowforge_workflow_version_immutable()",
            "DROP TRIGGER IF EXISTS workflows_first_version ON workflows",
            "DROP FUNCTION IF EXISTS flowforge_workflow_first_version()",
            *(
                f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}"
                for table, name, _definition in FOREIGN_KEYS
            ),
        ):
            await _ddl(connection, statement)
        await connection.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {STEP_KEY}")
    finally:
        await connection.close()


async def forwards() -> MigrationManager:
    manager = MigrationManager(
        migration_id=ID, app_name="flowforge", description=DESCRIPTION, wrap_in_transaction=False
    )
    manager.add_raw(run_forwards)
    manager.add_raw_backwards(run_backwards)
    return manager
