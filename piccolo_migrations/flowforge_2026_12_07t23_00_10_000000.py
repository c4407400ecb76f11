"""Retry policies checked by the database (issue 18), step 2 of 2: VALIDATE.

``VALIDATE CONSTRAINT workflow_steps_retry_policy_valid`` scans the existing
steps under SHARE UPDATE EXCLUSIVE (reads and writes go on), in its own
transaction: the previous migration's short ACCESS EXCLUSIVE lock is released.

Steps whose stored policy the API would refuse (written by raw SQL before this
check) stop it: the migration fails naming them (at most ten: id, workflow,
version, position, policy), and the constraint stays NOT VALID, still checked
for every new step. Nothing is rewritten: such a policy means something to
somebody (flowforge/domain/retries.py read ``{"max_attempts": 3, "note": 1}``
as three attempts), and steps are immutable (``workflow_steps_immutable``), so
the operator decides: set each to a policy the API accepts (as a superuser,
``SET session_replication_role = replica`` for the UPDATE lets it past the
trigger), then run the migration again. Backwards: nothing to undo (the previous
migration's backwards drops the constraint).
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from flowforge.db.online import OnlineMigration

ID = "2026-12-07T23:00:10:000000"
VERSION = "1.38.0"
DESCRIPTION = "validate workflow_steps_retry_policy_valid (issue 18)"

OFFENDERS = """
SELECT id, workflow_id, version, position, retry_policy::text AS retry_policy
FROM workflow_steps WHERE NOT flowforge_retry_policy_valid(retry_policy)
ORDER BY workflow_id, version, position LIMIT 10
"""

# Steps are immutable (the workflow_steps_immutable trigger): the UPDATE must pass it.
ADVICE = (
    "These steps' retry policies are ones the API refuses (stored by raw SQL). "
    "Set each to a policy the API accepts (docs/runs.md, Retries) - steps are "
    "immutable, so as a superuser: SET session_replication_role = replica; "
    "UPDATE workflow_steps SET retry_policy = '...' WHERE id = '...'; "
    "RESET session_replication_role - then run the migration again; or step it back."
)


async def forwards() -> MigrationManager:
    manager = MigrationManager(
        migration_id=ID, app_name="flowforge", description=DESCRIPTION, wrap_in_transaction=False
    )

    async def run() -> None:
        async with OnlineMigration.connect("retry policy check") as migration:
            await migration.validate(
                "workflow_steps",
                "workflow_steps_retry_policy_valid",
                offenders=OFFENDERS,
                advice=ADVICE,
            )

    async def run_backwards() -> None:
        return None

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
