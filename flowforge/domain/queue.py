"""The run queue: workers claim due runs under concurrency limits (issue 18).

:func:`claim_runs` hands a worker up to N due runs - ``pending`` runs whose
``not_before`` has passed and ``awaiting_retry`` runs whose ``next_attempt_at``
has - highest priority first, then round robin across workflows, then oldest
due first; each moves to ``running`` with ``claimed_by`` set and a lease
(``heartbeat_at`` + ``RUN_LEASE_TIMEOUT``) that every heartbeat and logged
attempt renews, and gets its ``run.started`` event. No run is handed to two
workers (``FOR UPDATE SKIP LOCKED``) and no concurrency limit is exceeded
(the limits' row locks; :mod:`flowforge.db.sql.queue` explains both).

Runs in the caller's transaction; the claim is what that transaction commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from uuid import UUID

from flowforge.db.engine import DB
from flowforge.db.sql.queue import CLAIM_RUNS, CLAIM_WORKFLOWS, WAITING
from flowforge.domain.limits import held_back_by
from flowforge.domain.records import RunRecord
from flowforge.domain.runs import _run

MAX_CLAIM: Final = 100


async def claim_runs(
    worker_id: str,
    *,
    limit: int = 1,
    workflow_ids: Sequence[UUID] | None = None,
    queue: str | None = None,
    owner_id: UUID | None = None,
) -> list[RunRecord]:
    """Claim up to `limit` due runs for `worker_id` (moved to running); maybe none.

    ``workflow_ids`` / ``queue`` restrict the claim to those workflows / that
    queue; ``owner_id`` to one user's workflows. Never waits on another
    claimer: runs and limits another transaction holds are skipped.
    """
    if not 1 <= limit <= MAX_CLAIM:
        raise ValueError(f"claim between 1 and {MAX_CLAIM} runs")
    connection = DB.require_transaction().connection
    ids = None if workflow_ids is None else list(workflow_ids)
    workflows = [row["id"] for row in await connection.fetch(CLAIM_WORKFLOWS, ids, queue, owner_id)]
    if not workflows:
        return []
    rows = await connection.fetch(CLAIM_RUNS, workflows, limit, worker_id)
    return [_run(row) for row in rows]


async def waiting_reason(run_id: UUID) -> str | None:
    """Why a queued run is not running yet; None unless it is pending or awaiting_retry.

    ``not_before`` (a delayed run), ``retry_backoff`` (its retry is not due),
    ``workflow_concurrency`` / ``concurrency_limit:<name>`` (a limit is full),
    or ``queued`` (due, with a free slot: waiting for a worker's claim). In the
    caller's transaction, without locks: a hint, true when read.
    """
    connection = DB.require_transaction().connection
    row = await connection.fetchrow(WAITING, run_id)
    if row is None or row["status"] not in ("pending", "awaiting_retry"):
        return None
    if row["not_due"]:
        return "not_before" if row["status"] == "pending" else "retry_backoff"
    return held_back_by(row) or "queued"
