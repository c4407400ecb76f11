"""Workflow versions, step 3 of 3 (issue 17; docs/decisions/15-workflow-versions.md): contract.

Drops ``workflow_steps_workflow_position_key`` (UNIQUE (workflow_id, position)):
versions 1..N of a workflow each have a step at position 0. The previous
migration built its replacement, ``workflow_steps_workflow_version_position_key``.
Adds the ``workflow_steps_immutable`` trigger: a step row is never updated, and
deleted only by the cascade of deleting its workflow, so a step log's
``step_id`` never dangles. From here on a release older than the versions code
cannot replace steps (its DELETE is refused): deploy the new release with it.

Backwards brings the old key back, which holds only if every workflow has the
steps of one version: it refuses (naming the workflows) when some workflow has
several, unless ``FLOWFORGE_DISCARD_OLD_VERSIONS=1`` is set, which deletes the
steps of every version but the current one (their step logs keep their step's
name and position; their ``step_id`` becomes NULL, as before versions existed).
"""

import os

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-07T19:14:55:000000"
VERSION = "1.38.0"
DESCRIPTION = "workflow versions: drop the old step-position key, steps immutable (contract)"

DISCARD = "FLOWFORGE_DISCARD_OLD_VERSIONS"

IMMUTABLE_FUNCTION = """
CREATE OR REPLACE FUNCTION flowforge_workflow_step_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Depth 1: a statement on workflow_steps itself. Deeper: the cascade of
    -- deleting the step's workflow (a foreign key's action is a trigger).
    IF TG_OP = 'DELETE' AND pg_trigger_depth() > 1 THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'workflow steps are immutable: replace the steps to create a new version'
        USING ERRCODE = 'integrity_constraint_violation',
              CONSTRAINT = 'workflow_steps_immutable';
END $$
"""
IMMUTABLE_TRIGGER = """
CREATE TRIGGER workflow_steps_immutable BEFORE UPDATE OR DELETE ON workflow_steps
FOR EACH ROW EXECUTE FUNCTION flowforge_workflow_step_immutable()
"""

SEVERAL_VERSIONS = """
SELECT DISTINCT s.workflow_id FROM workflow_steps s JOIN workflows w ON w.id = s.workflow_id
WHERE s.version <> w.version ORDER BY 1 LIMIT 10
"""
DISCARD_OLD_STEPS = """
DELETE FROM workflow_steps s USING workflows w
WHERE w.id = s.workflow_id AND s.version <> w.version
"""


LOCK_TRY = "100ms"
LOCK_TRIES = 100


async def take_lock(engine) -> None:
    """workflow_steps' ACCESS EXCLUSIVE lock, up front (the trigger's lock, then the
    DROP's, could deadlock with a writer), each try bounded by LOCK_TRY (well under
    deadlock_timeout) and retried; a try that times out releases what it took."""
    import asyncio

    import asyncpg

    await engine.run_ddl(f"SET LOCAL lock_timeout = '{LOCK_TRY}'")
    for attempt in range(LOCK_TRIES):
        await engine.run_ddl("SAVEPOINT flowforge_locks")
        try:
            await engine.run_ddl("LOCK TABLE workflow_steps IN ACCESS EXCLUSIVE MODE")
        except asyncpg.LockNotAvailableError:
            await engine.run_ddl("ROLLBACK TO SAVEPOINT flowforge_locks")
            await asyncio.sleep(min(0.05 * (attempt + 1), 1.0))
        else:
            await engine.run_ddl("RELEASE SAVEPOINT flowforge_locks")
            return
    raise RuntimeError(f"could not lock workflow_steps in {LOCK_TRIES} tries of {LOCK_TRY}")


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="flowforge", description=DESCRIPTION)

    async def run() -> None:
        engine = engine_finder()
        assert engine is not None
        await take_lock(engine)
        await engine.run_ddl("SET LOCAL lock_timeout = '5s'")
        await engine.run_ddl(IMMUTABLE_FUNCTION)
        await engine.run_ddl("DROP TRIGGER IF EXISTS workflow_steps_immutable ON workflow_steps")
        await engine.run_ddl(IMMUTABLE_TRIGGER)

    async def run_backwards() -> None:
        engine = engine_finder()
        assert engine is not None
        await take_lock(engine)
        await engine.run_ddl("SET LOCAL lock_timeout = '5s'")
        await engine.run_ddl("DROP TRIGGER IF EXISTS workflow_steps_immutable ON workflow_steps")
        await engine.run_ddl("DROP FUNCTION IF EXISTS flowforge_workflow_step_immutable()")
        several = [str(row["workflow_id"]) for row in await engine.run_ddl(SEVERAL_VERSIONS)]
        if several and os.environ.get(DISCARD) != "1":
            raise RuntimeError(
                "cannot restore UNIQUE (workflow_id, position) on workflow_steps: these "
                f"workflows have steps of several versions: {', '.join(several)}"
                f"{' (and maybe more)' if len(several) == 10 else ''}. "
                f"Set {DISCARD}=1 to delete the steps of every version but the current one."
            )
        if several:
            await engine.run_ddl(DISCARD_OLD_STEPS)

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)

    manager.drop_constraint(
        table_class_name="WorkflowStep",
        tablename="workflow_steps",
        constraint_name="workflow_steps_workflow_position_key",
        schema=None,
    )
    return manager
