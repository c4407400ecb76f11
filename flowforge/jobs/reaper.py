"""Stuck runs: a run left `running` by an executor that died is failed, with its event.

Whoever executes a run sends heartbeats while it works (``runs.heartbeat_run``,
``POST /api/v1/runs/{id}/heartbeat``, at least a few times per
``RUN_LEASE_TIMEOUT``; every logged step attempt renews the lease too). A running run whose last sign of life
- its heartbeat, or ``started_at`` before the first one - is older than the
lease is presumed orphaned: :func:`reap_stuck_runs` moves it to ``failed``
with a reason, fails its still-running step attempt (pending ones are
cancelled; each closed attempt gets a ``run.step_logged`` event), and writes its
``run.failed`` event, all in one transaction per batch; the run_history rows of
those changes name the actor ``reaper``. Runs are locked with SKIP LOCKED, so several reapers (every relay runs
one) never wait on each other or on an executor that is finishing the run; an
executor must move a run on with ``... WHERE status = 'running'`` and treat
"no row" as "reaped".

Uses ``workflow_runs_running_lease_idx`` (running runs by last sign of life).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, TypedDict, cast
from uuid import UUID

from flowforge.core import events, metrics
from flowforge.core.logs import get_logger
from flowforge.db.engine import DB
from flowforge.db.sql.history import SET_ACTOR
from flowforge.db.sql.reaper import CLOSE_STEP_ATTEMPTS, REAP, REQUEUE, WOULD_REAP
from flowforge.outbox.writer import record_events

logger = get_logger("flowforge.jobs.reaper")


STEP_ERROR = "The run was reaped: its executor stopped sending heartbeats."
# Who the run_history rows of a reap name (flowforge.db.sql.history).
ACTOR = "reaper"


class StuckRun(TypedDict):
    """A run a reap would fail now (``reap --dry_run``)."""

    id: UUID
    workflow_id: UUID
    last_seen: datetime.datetime  # its heartbeat, else its start
    running_steps: int  # step attempts the reap would fail
    pending_steps: int  # step attempts the reap would cancel


@dataclass
class ReapReport:
    runs: list[UUID] = field(default_factory=list)
    # Claimed runs whose lease lapsed, put back in the queue (issue 18).
    requeued: list[UUID] = field(default_factory=list)
    batches: int = 0
    lease_seconds: float = 0.0
    dry_run: bool = False
    # Dry run only: each run's last sign of life and its step attempts that
    # would be failed (running) and cancelled (pending).
    details: list[StuckRun] = field(default_factory=list)

    def describe(self) -> str:
        verb = "would reap" if self.dry_run else "reaped"
        lines = [f"{verb}: {len(self.runs)} runs (lease {self.lease_seconds:g} s)"]
        if self.requeued:
            lines.append(f"requeued: {len(self.requeued)} claimed runs whose lease lapsed")
        for run in self.details:
            lines.append(
                f"  run {run['id']} of workflow {run['workflow_id']}: last seen "
                f"{run['last_seen'].isoformat()}; would fail {run['running_steps']} running and "
                f"cancel {run['pending_steps']} pending step attempts"
            )
        return "\n".join(lines)


async def _take_over(statement: str, status: str, *arguments: Any) -> list[Any]:
    """Runs that `statement` moved out of running to `status`, as the reaper: their
    open step attempts closed (each with its run.step_logged event) and each run's
    event written. In the caller's transaction."""
    connection = DB.require_transaction().connection
    # The run_history rows of this batch name the reaper.
    await connection.execute(SET_ACTOR, ACTOR)
    runs = list(await connection.fetch(statement, *arguments))
    if runs:
        await connection.execute(CLOSE_STEP_ATTEMPTS, [run["id"] for run in runs], STEP_ERROR)
        await record_events(
            [
                (
                    events.WORKFLOW_RUN,
                    run["id"],
                    events.RUN_EVENT_BY_STATUS[status],
                    events.run_payload(dict(run), previous_status="running"),
                )
                for run in runs
            ]
        )
    return runs


async def requeue_batch(lease_seconds: float, batch_size: int, max_claims: int) -> list[Any]:
    """Put up to `batch_size` claimed runs whose lease lapsed back in the queue (issue 18).

    Their running step attempt is failed (it was cut off), pending ones are
    cancelled; each run gets its run.retry_scheduled event. Runs in the
    caller's transaction.
    """
    return await _take_over(REQUEUE, "awaiting_retry", lease_seconds, batch_size, max_claims)


async def reap_batch(lease_seconds: float, batch_size: int) -> list[Any]:
    """Fail up to `batch_size` stuck runs, their step attempts, and write their events.

    Runs in the caller's transaction.
    """
    return await _take_over(REAP, "failed", lease_seconds, batch_size)


async def find_stuck_runs(lease_seconds: float) -> list[StuckRun]:
    """The runs a reap would fail now (see WOULD_REAP); in the caller's transaction."""
    connection = DB.require_transaction().connection
    rows = await connection.fetch(WOULD_REAP, lease_seconds)
    return [cast(StuckRun, dict(row)) for row in rows]


async def reap_stuck_runs(
    lease_seconds: float,
    batch_size: int = 500,
    *,
    max_claims: int = 3,
    dry_run: bool = False,
) -> ReapReport:
    """Fail every run whose lease expired, one transaction per batch; idempotent.

    A job of several units of work: call it outside a transaction (each batch
    commits before the next is claimed). ``dry_run`` only lists those runs and
    changes nothing (it lists every lapsed run, requeued or not). Claimed runs
    the queue may take again (``max_claims``, their step's retry policy) are
    requeued first (``report.requeued``); the rest are failed.
    """
    DB.require_no_transaction("reap_stuck_runs")
    report = ReapReport(lease_seconds=lease_seconds, dry_run=dry_run)
    if dry_run:
        async with DB.transaction():
            report.details = await find_stuck_runs(lease_seconds)
        report.runs = [run["id"] for run in report.details]
        return report
    while True:
        async with DB.transaction():
            requeued = await requeue_batch(lease_seconds, batch_size, max_claims)
        report.requeued.extend(run["id"] for run in requeued)
        for run in requeued:
            logger.warning("reaper.run_requeued", run_id=run["id"], workflow_id=run["workflow_id"])
        if len(requeued) < batch_size:
            break
    while True:
        async with DB.transaction():
            runs = await reap_batch(lease_seconds, batch_size)
        if not runs:
            break
        report.batches += 1
        report.runs.extend(run["id"] for run in runs)
        metrics.REAPED_RUNS.inc(len(runs))
        for run in runs:
            logger.warning("reaper.run_failed", run_id=run["id"], workflow_id=run["workflow_id"])
        if len(runs) < batch_size:
            break
    return report
