"""The reaper's statements: fail the runs whose lease ran out (flowforge.jobs.reaper).

Uses ``workflow_runs_running_lease_idx`` (running runs by last sign of life).
"""

from __future__ import annotations

from typing import Final, LiteralString

from flowforge.core import events
from flowforge.db.sql import outbox
from flowforge.db.sql.quote import column_list
from flowforge.db.sql.runs import LOG_TABLE_COLUMNS, RUN_COLUMNS_OF_R

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

# Issue 18: a *claimed* run whose lease lapsed goes back to the queue instead
# (awaiting_retry, due now: the claim takes it again) while it was claimed
# fewer than $3 times and the step attempt it was running, if any, may be
# retried under its step's policy (a policy without a usable max_attempts is
# one attempt). Run before REAP in the same transaction: REAP fails the rest.
# Its event (run.retry_scheduled) is written by the reaper from the returned
# rows, as REAP's are: no outbox write (nor its lock) when nothing lapsed.
REQUEUE: Final[LiteralString] = f"""
WITH stuck AS (
    SELECT r.id FROM workflow_runs r
    WHERE r.status = 'running'
        AND COALESCE(r.heartbeat_at, r.started_at) < now() - make_interval(secs => $1::float8)
        AND r.claimed_by IS NOT NULL AND r.claims < $3
        AND NOT EXISTS (
            SELECT 1 FROM run_step_logs l LEFT JOIN workflow_steps s ON s.id = l.step_id
            WHERE l.run_id = r.id AND l.run_created_at = r.created_at AND l.status = 'running'
              AND l.attempt >= CASE
                  WHEN jsonb_typeof(s.retry_policy -> 'max_attempts') = 'number'
                  THEN (s.retry_policy ->> 'max_attempts')::numeric ELSE 1 END)
    ORDER BY COALESCE(r.heartbeat_at, r.started_at)
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), requeued AS (
    UPDATE workflow_runs AS r
    SET status = 'awaiting_retry',
        next_attempt_at = clock_timestamp(),
        heartbeat_at = NULL,
        claimed_by = NULL,
        error = format(
            'Lease lapsed: no heartbeat from %s since %s (lease %s s); back in the queue.',
            r.claimed_by,
            to_char(COALESCE(r.heartbeat_at, r.started_at) AT TIME ZONE 'UTC',
                    'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
            $1::float8
        )
    WHERE r.id = ANY(ARRAY(SELECT id FROM stuck)) AND r.status = 'running'
    RETURNING {RUN_COLUMNS_OF_R}
)
SELECT * FROM requeued
"""  # noqa: S608

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

# The reaped runs' open step attempts: a running one fails, a pending one is
# cancelled, each with the reason ($2) and its run.step_logged event in the same
# statement (its run_history row comes from the trigger). Raw: one array
# parameter for the whole batch (up to 500 runs); the builder's is_in binds a
# parameter per run, a new statement per batch size, and Piccolo itself warns
# above 100 values. The join to the runs gives each attempt's workflow (for the
# event) and its partition key.
CLOSE_STEP_ATTEMPTS: Final[LiteralString] = f"""
WITH closed AS (
    UPDATE run_step_logs l
    SET status = CASE WHEN l.status = 'running' THEN 'failed' ELSE 'cancelled' END,
        finished_at = clock_timestamp(), error = $2
    FROM workflow_runs r
    WHERE r.id = ANY($1::uuid[]) AND l.run_id = r.id AND l.run_created_at = r.created_at
        AND l.status IN ('running', 'pending')
    RETURNING {column_list(*LOG_TABLE_COLUMNS, alias="l")}, r.workflow_id
), event AS (
    {
    outbox.insert_from(
        "closed l",
        aggregate_type=events.WORKFLOW_RUN,
        aggregate_id="l.run_id",
        event_type="'run.step_logged'",
        payload=outbox.step_logged_payload_sql("l", "l.workflow_id"),
    )
}
)
SELECT count(*) FILTER (WHERE status = 'failed') AS failed,
    count(*) FILTER (WHERE status = 'cancelled') AS cancelled
FROM closed
"""  # noqa: S608 - composed from constants; values are bind parameters

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
