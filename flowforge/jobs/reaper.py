"""Stuck runs: a run left `running` by an executor that died is failed, with its event.

Whoever executes a run sends heartbeats while it works (``runs.heartbeat_run``,
``POST /api/v1/runs/{id}/heartbeat``, at least a few times per
``RUN_LEASE_TIMEOUT``; every logged step attempt renews the lease too). A running run whose last sign of life
- its heartbeat, or ``started_at`` before the first one - is older than the
lease is presumed orphaned: :func:`reap_stuck_runs` moves it to ``failed``
with a reason, fails its still-running step attempt (pending ones are
cancelled), and writes its ``run.failed`` event, all in one transaction per
batch. Runs are locked with SKIP LOCKED, so several reapers (every relay runs
one) never wait on each other or on an executor that is finishing the run; an
executor must move a run on with ``... WHERE status = 'running'`` and treat
"no row" as "reaped".

Uses ``workflow_runs_running_lease_idx`` (running runs by last sign of life).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, LiteralString
from uuid import UUID

from flowforge.core import metrics
from flowforge.core.logs import get_logger
from flowforge.db.engine import DB
from flowforge.outbox import events
from flowforge.outbox.writer import record_events

logger = get_logger("flowforge.jobs.reaper")

# The lease expression must match the index expression exactly to use it.
# An end is stamped with clock_timestamp(), as runs.TRANSITION_RUN's (see there):
# the reaper never waits for a run's lock (SKIP LOCKED), and every attempt of a
# run it claims started before the run's last sign of life, so the reading
# follows every started_at it closes and the timestamps CHECKs keep meaning it.
# REAP updates "id = ANY(ARRAY(...))" rather than joining the CTE: the planner
# cannot size the CTE and may hash-join it against a scan of every run.
FIND_STUCK: Final[LiteralString] = """
SELECT id FROM workflow_runs
WHERE status = 'running'
    AND COALESCE(heartbeat_at, started_at) < now() - make_interval(secs => $1::float8)
ORDER BY COALESCE(heartbeat_at, started_at)
LIMIT $2
FOR UPDATE SKIP LOCKED
"""

REAP: Final[LiteralString] = f"""
WITH stuck AS ({FIND_STUCK})
UPDATE workflow_runs AS r
SET status = 'failed',
    finished_at = clock_timestamp(),
    error = format(
        'Reaped: no heartbeat since %s (lease %s s); the executor is presumed dead.',
        to_char(COALESCE(r.heartbeat_at, r.started_at) AT TIME ZONE 'UTC',
                'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        $1::float8
    )
WHERE r.id = ANY(ARRAY(SELECT id FROM stuck)) AND r.status = 'running'
RETURNING r.id, r.workflow_id, r.status, r.error, r.started_at, r.finished_at
"""  # noqa: S608 - composed from constants; values are bind parameters

# The two step-log updates stay raw: one array parameter for the whole batch
# (up to 500 runs). The builder's is_in binds a parameter per run, a new
# statement per batch size, and Piccolo itself warns above 100 values.
FAIL_STEP_ATTEMPTS: Final[LiteralString] = """
UPDATE run_step_logs
SET status = 'failed', finished_at = clock_timestamp(), error = $2
WHERE run_id = ANY($1::uuid[]) AND status = 'running'
"""

CANCEL_PENDING_STEPS: Final[LiteralString] = """
UPDATE run_step_logs
SET status = 'cancelled', finished_at = clock_timestamp()
WHERE run_id = ANY($1::uuid[]) AND status = 'pending'
"""

# What a dry run reports: every run the reaper would fail now, with what it
# would do to its step attempts. No lock: a run an executor is finishing right
# now is listed, and the real reap would skip it (SKIP LOCKED) or see it done.
WOULD_REAP: Final[LiteralString] = """
SELECT r.id, r.workflow_id, COALESCE(r.heartbeat_at, r.started_at) AS last_seen,
    (SELECT count(*) FROM run_step_logs s
        WHERE s.run_id = r.id AND s.status = 'running') AS running_steps,
    (SELECT count(*) FROM run_step_logs s
        WHERE s.run_id = r.id AND s.status = 'pending') AS pending_steps
FROM workflow_runs AS r
WHERE r.status = 'running'
    AND COALESCE(r.heartbeat_at, r.started_at) < now() - make_interval(secs => $1::float8)
ORDER BY COALESCE(r.heartbeat_at, r.started_at)
"""

STEP_ERROR = "The run was reaped: its executor stopped sending heartbeats."


@dataclass
class ReapReport:
    runs: list[UUID] = field(default_factory=list)
    batches: int = 0
    lease_seconds: float = 0.0
    dry_run: bool = False
    # Dry run only: each run's last sign of life and its step attempts that
    # would be failed (running) and cancelled (pending).
    details: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> str:
        verb = "would reap" if self.dry_run else "reaped"
        lines = [f"{verb}: {len(self.runs)} runs (lease {self.lease_seconds:g} s)"]
        for run in self.details:
            lines.append(
                f"  run {run['id']} of workflow {run['workflow_id']}: last seen "
                f"{run['last_seen'].isoformat()}; would fail {run['running_steps']} running and "
                f"cancel {run['pending_steps']} pending step attempts"
            )
        return "\n".join(lines)


async def reap_batch(lease_seconds: float, batch_size: int) -> list[Any]:
    """Fail up to `batch_size` stuck runs, their step attempts, and write their events.

    Runs in the caller's transaction.
    """
    connection = DB.require_transaction().connection
    runs = list(await connection.fetch(REAP, lease_seconds, batch_size))
    if not runs:
        return runs
    run_ids = [run["id"] for run in runs]
    await connection.execute(FAIL_STEP_ATTEMPTS, run_ids, STEP_ERROR)
    await connection.execute(CANCEL_PENDING_STEPS, run_ids)
    await record_events(
        [
            (
                events.WORKFLOW_RUN,
                run["id"],
                events.RUN_EVENT_BY_STATUS["failed"],
                events.run_payload(dict(run), previous_status="running"),
            )
            for run in runs
        ]
    )
    return runs


async def find_stuck_runs(lease_seconds: float) -> list[dict[str, Any]]:
    """The runs a reap would fail now (see WOULD_REAP); in the caller's transaction."""
    connection = DB.require_transaction().connection
    return [dict(row) for row in await connection.fetch(WOULD_REAP, lease_seconds)]


async def reap_stuck_runs(
    lease_seconds: float, batch_size: int = 500, *, dry_run: bool = False
) -> ReapReport:
    """Fail every run whose lease expired, one transaction per batch; idempotent.

    A job of several units of work: call it outside a transaction (each batch
    commits before the next is claimed). ``dry_run`` only lists those runs and
    changes nothing.
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
