"""Indexes and the trigger behind the outbox relay, the reaper and pruning (issue 4).

Hand-written because Piccolo cannot express partial or expression indexes or
triggers, and separate from the column migration before it because ``add_raw``
steps run before a migration's table operations (piccolo issue #541).

* ``flowforge_outbox_notify()`` and the statement-level ``outbox_notify``
  trigger: ``NOTIFY flowforge_outbox`` once per INSERT statement, delivered at
  COMMIT (a rolled-back insert wakes nobody). Only a hint for idle relays,
  which poll as well: NOTIFY is lost behind transaction-mode poolers.
* ``outbox_claim_idx``: claimable events in publish order (``seq``); also the
  "oldest unpublished event" probe for the lag metric and the idle relay.
  Replaces ``outbox_unpublished_idx`` (created_at order is not commit order).
* ``outbox_aggregate_unpublished_idx``: "is there an older unpublished event
  of this aggregate?" (only an aggregate's oldest event may be claimed), and
  the events that follow a claimed one.
* ``outbox_published_at_idx`` / ``workflow_runs_terminal_finished_at_idx``:
  what ``piccolo flowforge prune`` deletes, oldest first.
* ``outbox_dead_lettered_idx``: counting and listing dead letters.
* ``workflow_runs_running_lease_idx``: running runs by last sign of life, for
  the reaper.

The tables may already hold a long history when this runs, so every index is
built ``CONCURRENTLY`` (no lock that blocks writers), which cannot run inside
a transaction: ``wrap_in_transaction=False``. Each CREATE is preceded by a
DROP ... IF EXISTS, so a run interrupted half-way (which leaves an INVALID
index behind) can simply be run again. Stepping this migration back and
forwards drops and recreates these objects only: no row is touched.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-25T13:44:40:219100"
VERSION = "1.38.0"
DESCRIPTION = "relay and retention indexes, outbox notify trigger"

TERMINAL = "('completed', 'failed', 'cancelled')"

INDEXES = {
    "outbox_claim_idx": ("outbox (seq) WHERE published_at IS NULL AND dead_lettered_at IS NULL"),
    "outbox_aggregate_unpublished_idx": (
        "outbox (aggregate_type, aggregate_id, seq) WHERE published_at IS NULL"
    ),
    "outbox_published_at_idx": "outbox (published_at) WHERE published_at IS NOT NULL",
    "outbox_dead_lettered_idx": ("outbox (dead_lettered_at) WHERE dead_lettered_at IS NOT NULL"),
    "workflow_runs_running_lease_idx": (
        "workflow_runs ((COALESCE(heartbeat_at, started_at))) WHERE status = 'running'"
    ),
    "workflow_runs_terminal_finished_at_idx": (
        f"workflow_runs (finished_at) WHERE status IN {TERMINAL}"
    ),
}

# The index the earlier raw migration created for the relay, superseded here.
OLD_OUTBOX_INDEX = (
    "outbox_unpublished_idx",
    "outbox (created_at, id) WHERE published_at IS NULL",
)

FORWARDS = [
    """
    CREATE OR REPLACE FUNCTION flowforge_outbox_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('flowforge_outbox', '');
        RETURN NULL;
    END
    $$
    """,
    "DROP TRIGGER IF EXISTS outbox_notify ON outbox",
    """
    CREATE TRIGGER outbox_notify
    AFTER INSERT ON outbox
    FOR EACH STATEMENT
    EXECUTE FUNCTION flowforge_outbox_notify()
    """,
    *[
        statement
        for name, definition in INDEXES.items()
        for statement in (
            f"DROP INDEX CONCURRENTLY IF EXISTS {name}",
            f"CREATE INDEX CONCURRENTLY {name} ON {definition}",
        )
    ],
    f"DROP INDEX CONCURRENTLY IF EXISTS {OLD_OUTBOX_INDEX[0]}",
]

BACKWARDS = [
    f"DROP INDEX CONCURRENTLY IF EXISTS {OLD_OUTBOX_INDEX[0]}",
    f"CREATE INDEX CONCURRENTLY {OLD_OUTBOX_INDEX[0]} ON {OLD_OUTBOX_INDEX[1]}",
    *[f"DROP INDEX CONCURRENTLY IF EXISTS {name}" for name in reversed(INDEXES)],
    "DROP TRIGGER IF EXISTS outbox_notify ON outbox",
    "DROP FUNCTION IF EXISTS flowforge_outbox_notify()",
]


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
