"""The run queue's CHECK constraints, added NOT VALID (issue 18).

Changed: ``workflow_runs_status_valid`` and ``workflow_runs_timestamps_match_status``
admit ``awaiting_retry`` (started, not finished), and so do run_history's
``run_history_to_status_valid`` and ``run_history_from_status_valid`` (the
history records every status a run takes); ``api_keys_scopes_valid`` admits
the ``worker`` scope. New: ``workflow_runs_priority_range``,
``workflow_runs_retry_has_due_time``, ``workflow_runs_claims_non_negative``,
``workflows_max_concurrency_positive``, ``workflows_queue_not_blank``.

Each is (re-)added ``NOT VALID``: a catalog change under a short ACCESS EXCLUSIVE
lock (bounded by ``lock_timeout``; one table per transaction), checked for every new or updated row from
then on, without scanning the existing rows. The next migration validates them
(a scan under SHARE UPDATE EXCLUSIVE, which lets reads and writes go on), so a
table of a million runs keeps serving throughout. Raw SQL: Piccolo cannot add a
constraint NOT VALID; the bodies are those of flowforge/db/tables.py.

Backwards restores the previous bodies and validates them; it refuses first
(changing nothing) while a run is awaiting_retry or a key has the worker scope,
which the previous schema cannot represent. run_history's status checks come
back NOT VALID: history is append-only, and rows that recorded an
awaiting_retry stay.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-07T20:30:20:000000"
VERSION = "1.38.0"
DESCRIPTION = "run queue CHECK constraints, NOT VALID (issue 18)"

OLD_TIMESTAMPS = """
(status = 'pending' AND started_at IS NULL AND finished_at IS NULL)
OR (status = 'running' AND started_at IS NOT NULL AND finished_at IS NULL)
OR (status IN ('completed', 'failed') AND started_at IS NOT NULL AND finished_at IS NOT NULL
    AND finished_at >= started_at)
OR (status = 'cancelled' AND finished_at IS NOT NULL
    AND (started_at IS NULL OR finished_at >= started_at))
"""
NEW_TIMESTAMPS = (
    OLD_TIMESTAMPS
    + "OR (status = 'awaiting_retry' AND started_at IS NOT NULL AND finished_at IS NULL)"
)
OLD_STATUSES = "status IN ('pending', 'running', 'completed', 'failed', 'cancelled')"
NEW_STATUSES = (
    "status IN ('pending', 'running', 'completed', 'failed', 'cancelled', 'awaiting_retry')"
)
OLD_TO_STATUSES = OLD_STATUSES.replace("status", "to_status")
NEW_TO_STATUSES = NEW_STATUSES.replace("status", "to_status")
OLD_FROM_STATUSES = "from_status IS NULL OR " + OLD_STATUSES.replace("status", "from_status")
NEW_FROM_STATUSES = "from_status IS NULL OR " + NEW_STATUSES.replace("status", "from_status")
OLD_SCOPES = "cardinality(scopes) >= 1 AND scopes <@ ARRAY['read', 'write', 'admin']::varchar[]"
NEW_SCOPES = (
    "cardinality(scopes) >= 1 AND scopes <@ ARRAY['read', 'write', 'admin', 'worker']::varchar[]"
)

NEW_CHECKS = {
    "workflow_runs": {
        "workflow_runs_priority_range": "priority BETWEEN -100 AND 100",
        # Due time exactly while awaiting_retry; a run cancelled while awaiting
        # keeps it (when it would have retried; its event's previous_status).
        "workflow_runs_retry_has_due_time": (
            "(status <> 'awaiting_retry' OR next_attempt_at IS NOT NULL) "
            "AND (status NOT IN ('pending', 'running') OR next_attempt_at IS NULL)"
        ),
        "workflow_runs_claims_non_negative": "claims >= 0",
    },
    "workflows": {
        "workflows_max_concurrency_positive": "max_concurrency IS NULL OR max_concurrency >= 1",
        "workflows_queue_not_blank": "btrim(queue) <> ''",
    },
}
CHANGED = [
    ("workflow_runs", "workflow_runs_status_valid", OLD_STATUSES, NEW_STATUSES),
    ("workflow_runs", "workflow_runs_timestamps_match_status", OLD_TIMESTAMPS, NEW_TIMESTAMPS),
    ("api_keys", "api_keys_scopes_valid", OLD_SCOPES, NEW_SCOPES),
    ("run_history", "run_history_to_status_valid", OLD_TO_STATUSES, NEW_TO_STATUSES),
    ("run_history", "run_history_from_status_valid", OLD_FROM_STATUSES, NEW_FROM_STATUSES),
]


def _replace(table: str, name: str, body: str) -> str:
    return f"DROP CONSTRAINT IF EXISTS {name}, ADD CONSTRAINT {name} CHECK ({body}) NOT VALID"


def _per_table(clauses: list[tuple[str, str]]) -> list[str]:
    """One ALTER TABLE per table, each its own transaction with a bounded lock wait."""
    tables: dict[str, list[str]] = {}
    for table, clause in clauses:
        tables.setdefault(table, []).append(clause)
    return [
        f"SET LOCAL lock_timeout = '5s'; ALTER TABLE {table} {', '.join(parts)}"
        for table, parts in tables.items()
    ]


# concurrency_limits is new (previous migration): it gets the updated_at
# trigger every table has (flowforge_2026_11_25t13_24_39_823524).
TRIGGER = (
    "CREATE TRIGGER concurrency_limits_set_updated_at BEFORE UPDATE ON concurrency_limits "
    "FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION flowforge_set_updated_at()"
)

# Each statement is its own transaction (wrap_in_transaction=False; a
# multi-statement string runs as one implicit transaction): it holds ACCESS
# EXCLUSIVE on one table only, so a writer holding another of them cannot
# deadlock with it (benchmarks/partitions.py's writer did, when one transaction
# altered workflow_runs and then workflows). Each is idempotent, so a run
# interrupted between them simply runs again.
FORWARDS = [
    f"DROP TRIGGER IF EXISTS concurrency_limits_set_updated_at ON concurrency_limits; {TRIGGER}",
    *_per_table(
        [(table, _replace(table, name, new)) for table, name, _old, new in CHANGED]
        + [
            (table, _replace(table, name, body))
            for table, checks in NEW_CHECKS.items()
            for name, body in checks.items()
        ]
    ),
]
# Refuses first (changing nothing) while the data needs the new schema.
REFUSE_IF_USED = """
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM workflow_runs WHERE status = 'awaiting_retry')
        OR EXISTS (SELECT 1 FROM api_keys WHERE 'worker' = ANY(scopes)) THEN
        RAISE EXCEPTION 'runs awaiting a retry or keys with the worker scope exist: '
            'cancel or finish those runs and revoke those keys before stepping back';
    END IF;
END $$
"""
BACKWARDS = [
    REFUSE_IF_USED,
    "DROP TRIGGER IF EXISTS concurrency_limits_set_updated_at ON concurrency_limits",
    *_per_table(
        [
            (table, f"DROP CONSTRAINT IF EXISTS {name}")
            for table, checks in NEW_CHECKS.items()
            for name in checks
        ]
        + [(table, _replace(table, name, old)) for table, name, old, _new in CHANGED]
    ),
    # run_history is append-only: rows that recorded an awaiting_retry stay, so
    # its narrower checks come back NOT VALID (they hold for every new row).
    *(
        f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}"
        for table, name, _o, _n in CHANGED
        if table != "run_history"
    ),
]


async def _run_all(statements: list[str]) -> None:
    """Each statement in its own transaction on one connection (a string of several
    statements runs as one implicit transaction: the simple query protocol)."""
    engine = engine_finder()
    assert engine is not None
    connection = await engine.get_new_connection()  # type: ignore[attr-defined]
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def forwards() -> MigrationManager:
    manager = MigrationManager(
        migration_id=ID, app_name="flowforge", description=DESCRIPTION, wrap_in_transaction=False
    )

    async def run() -> None:
        await _run_all(FORWARDS)

    async def run_backwards() -> None:
        await _run_all(BACKWARDS)

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
