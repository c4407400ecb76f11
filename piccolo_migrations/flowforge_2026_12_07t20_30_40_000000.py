"""The index the run queue claims from (issue 18): ``workflow_runs_due_idx``.

``(workflow_id, priority DESC, COALESCE(next_attempt_at, not_before, created_at), id)``,
partial on ``status IN ('pending', 'awaiting_retry')``: only queued runs are in
it (finished runs, the bulk of a large table, are not), in claim order per
workflow, so "the next due runs of this workflow" is one range read
(flowforge/db/sql/queue.py; tests/test_explain.py proves the plan). The
expression is the run's due time: next_attempt_at for a retry, else not_before,
else its creation. Built ``CONCURRENTLY`` (no lock that blocks writers), which
cannot run in a transaction: ``wrap_in_transaction=False``; the DROP ... IF
EXISTS first lets an interrupted build (an INVALID index) run again.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-07T20:30:40:000000"
VERSION = "1.38.0"
DESCRIPTION = "workflow_runs_due_idx (partial, concurrently; issue 18)"

INDEX = "workflow_runs_due_idx"

FORWARDS = [
    f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}",
    f"CREATE INDEX CONCURRENTLY {INDEX} ON workflow_runs "
    "(workflow_id, priority DESC, (COALESCE(next_attempt_at, not_before, created_at)), id) "
    "WHERE status IN ('pending', 'awaiting_retry')",
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
