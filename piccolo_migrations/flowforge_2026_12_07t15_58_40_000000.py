"""The index behind "the keys a key granted" (issue 15), for revocation's recursive lookup.

``api_keys_granted_by_key_id_idx`` on ``api_keys (granted_by_key_id)``, partial
(``WHERE granted_by_key_id IS NOT NULL``: keys issued by the CLI or the seed
grant nothing to look up by). It serves each step of the recursive CTE in
``flowforge.domain.api_keys.REVOKE_GRANTED`` and the ON DELETE CASCADE of the column's
foreign key. Hand-written because Piccolo cannot express a partial index, and
built ``CONCURRENTLY`` (no lock that blocks writers), which cannot run inside a
transaction: ``wrap_in_transaction=False``. The DROP ... IF EXISTS first lets a
run interrupted half-way (an INVALID index left behind) simply run again.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-07T15:58:40:000000"
VERSION = "1.38.0"
DESCRIPTION = "api_keys_granted_by_key_id_idx (partial, concurrently)"

INDEX = "api_keys_granted_by_key_id_idx"

FORWARDS = [
    f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}",
    f"CREATE INDEX CONCURRENTLY {INDEX} ON api_keys (granted_by_key_id) "
    "WHERE granted_by_key_id IS NOT NULL",
]
BACKWARDS = [f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}"]


async def _run_all(statements: list[str]) -> None:
    engine = engine_finder()
    assert engine is not None
    for statement in statements:
        await engine.run_ddl(statement)


async def forwards() -> MigrationManager:
    manager = MigrationManager(
        migration_id=ID,
        app_name="flowforge",
        description=DESCRIPTION,
        wrap_in_transaction=False,
    )

    async def run() -> None:
        await _run_all(FORWARDS)

    async def run_backwards() -> None:
        await _run_all(BACKWARDS)

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
