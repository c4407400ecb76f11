"""The run queue's statements: claim, the limits' slots, retries (flowforge.domain.queue).

A claim is two statements in one transaction (docs/decisions/16-run-queue.md):

1. :data:`CLAIM_WORKFLOWS` finds the workflows with due runs (matching the
   worker's filters) and locks the row of every limit they are under - the
   workflow's row for ``max_concurrency``, the ``concurrency_limits`` row for a
   named limit - ``FOR NO KEY UPDATE SKIP LOCKED``. A workflow whose limit
   another claim (or start) holds right now is left out of this claim; a claim
   never waits.
2. :data:`CLAIM_RUNS` takes a new snapshot *after* those locks are held, so
   its count of running runs includes every run a previous holder moved to
   running (it committed before releasing the lock): the free slots it computes
   cannot be stale. It then takes, per workflow, the next due runs up to the
   free slots (``workflow_runs_due_idx``; ``FOR NO KEY UPDATE SKIP LOCKED``:
   two claimers never take the same run and never wait on each other), caps
   each named limit across its workflows, interleaves the workflows (round
   robin within a priority), and moves the chosen runs to running with their
   ``run.started`` events.

Every path into running takes the same limit locks first (the direct start:
:data:`LOCK_START_SLOTS` then :data:`START_SLOTS`), so no interleaving of
claims and starts can exceed a limit. Leaving running frees the slot by
itself: nothing is held but the count.
"""

from __future__ import annotations

from typing import Final, LiteralString

from flowforge.core import events
from flowforge.db.sql import outbox
from flowforge.db.sql.runs import RUN_COLUMNS, RUN_COLUMNS_OF_R

# A queued run's due time; the expression of workflow_runs_due_idx (must match it).
DUE_AT: Final[LiteralString] = "COALESCE(r.next_attempt_at, r.not_before, r.created_at)"
QUEUED: Final[LiteralString] = "r.status IN ('pending', 'awaiting_retry')"

# $1: workflow ids (NULL: any), $2: queue name (NULL: any), $3: owner (NULL: any).
CLAIM_WORKFLOWS: Final[LiteralString] = f"""
WITH candidate AS MATERIALIZED (
    SELECT w.id, w.max_concurrency, w.concurrency_limit_id
    FROM workflows w
    -- LIMIT 1 keeps this a probe of the due index per workflow: as EXISTS the
    -- planner may turn it into a semi-join that reads every queued run, which
    -- grows with the queue's depth (tests/test_explain.py).
    CROSS JOIN LATERAL (
        SELECT 1 FROM workflow_runs r
        WHERE r.workflow_id = w.id AND {QUEUED} AND {DUE_AT} <= now()
        LIMIT 1
    ) due
    WHERE ($1::uuid[] IS NULL OR w.id = ANY($1::uuid[]))
      AND ($2::text IS NULL OR w.queue = $2::text)
      AND ($3::uuid IS NULL OR w.owner_id = $3::uuid)
), named AS (
    SELECT l.id FROM concurrency_limits l
    WHERE l.id IN (SELECT concurrency_limit_id FROM candidate)
    ORDER BY l.id
    FOR NO KEY UPDATE SKIP LOCKED
), capped AS (
    SELECT w.id FROM workflows w
    WHERE w.id IN (SELECT id FROM candidate WHERE max_concurrency IS NOT NULL)
    ORDER BY w.id
    FOR NO KEY UPDATE SKIP LOCKED
)
SELECT c.id FROM candidate c
WHERE (c.max_concurrency IS NULL OR c.id IN (SELECT id FROM capped))
  AND (c.concurrency_limit_id IS NULL OR c.concurrency_limit_id IN (SELECT id FROM named))
"""  # noqa: S608 - constant fragments; every value is a bind parameter


# Free slots of each workflow (and of its named limit), counted in this
# statement's snapshot: after the limit locks are held (see the module doc).
# NULL: no such limit (CASE: an unlimited workflow's running runs are not counted).
_SLOTS: Final[LiteralString] = """
SELECT w.id AS workflow_id, w.concurrency_limit_id AS limit_id, l.name AS limit_name,
    CASE WHEN w.max_concurrency IS NOT NULL THEN
        w.max_concurrency - (SELECT count(*) FROM workflow_runs x
                             WHERE x.workflow_id = w.id AND x.status = 'running')
    END AS workflow_free,
    CASE WHEN l.id IS NOT NULL THEN
        l.max_running - (SELECT count(*) FROM workflow_runs x JOIN workflows lw
                             ON lw.id = x.workflow_id
                         WHERE lw.concurrency_limit_id = l.id AND x.status = 'running')
    END AS limit_free
FROM workflows w LEFT JOIN concurrency_limits l ON l.id = w.concurrency_limit_id
"""

_RUN_STARTED: Final[LiteralString] = outbox.insert_from(
    "claimed c",
    aggregate_type=events.WORKFLOW_RUN,
    aggregate_id="c.id",
    event_type="'run.started'",
    payload=outbox.run_payload_sql("c", "c.previous_status", "run.started"),
)

# Each workflow offers at most its fair share of the claim plus one
# (ceil(N / W) + 1), so a claim locks about N + W runs rather than N per
# workflow; a claim may then hand out fewer than N when few workflows hold most
# of the due runs (a worker asks again). $1: the workflows CLAIM_WORKFLOWS returned, $2: at most this many runs,
# $3: the worker's id. Order: priority (higher first), then round robin across
# workflows (each workflow's first due run, then each one's second, ...), then
# due time: a workflow with 100,000 due runs gets no more of a claim than one
# with 10 (fairness). The UPDATE matches "id = ANY(ARRAY(...))" (an index
# lookup per chosen run) and joins the CTE only for previous_status.
CLAIM_RUNS: Final[LiteralString] = f"""
WITH slot AS (
    {_SLOTS}
    WHERE w.id = ANY($1::uuid[])
), head AS (
    SELECT s.workflow_id, s.limit_id, s.limit_free, q.id, q.status, q.priority, q.due_at,
        row_number() OVER (PARTITION BY s.workflow_id
                           ORDER BY q.priority DESC, q.due_at, q.id) AS turn
    FROM slot s CROSS JOIN LATERAL (
        SELECT r.id, r.status, r.priority, {DUE_AT} AS due_at
        FROM workflow_runs r
        WHERE r.workflow_id = s.workflow_id AND {QUEUED} AND {DUE_AT} <= now()
        ORDER BY r.priority DESC, {DUE_AT}, r.id
        LIMIT GREATEST(LEAST($2::int, COALESCE(s.workflow_free, $2::int),
                             COALESCE(s.limit_free, $2::int),
                             -- a fair share and one more: locks ~N + W rows, not N * W
                             ceil($2::numeric / cardinality($1::uuid[]))::int + 1), 0)
        FOR NO KEY UPDATE SKIP LOCKED
    ) q
), within_limit AS (
    SELECT h.*, row_number() OVER (PARTITION BY h.limit_id
                                   ORDER BY h.priority DESC, h.turn, h.due_at, h.id) AS limit_turn
    FROM head h
), chosen AS MATERIALIZED (
    SELECT id, status AS previous_status FROM within_limit
    WHERE limit_id IS NULL OR limit_turn <= limit_free
    ORDER BY priority DESC, turn, due_at, id
    LIMIT $2::int
), claimed AS (
    UPDATE workflow_runs r SET
        status = 'running',
        started_at = COALESCE(r.started_at, clock_timestamp()),
        heartbeat_at = clock_timestamp(),
        next_attempt_at = NULL,
        claimed_by = $3::text,
        claims = r.claims + 1
    FROM chosen c
    WHERE r.id = ANY(ARRAY(SELECT id FROM chosen)) AND r.id = c.id AND {QUEUED}
    RETURNING {RUN_COLUMNS_OF_R}, c.previous_status
), event AS (
    {_RUN_STARTED}
)
SELECT {RUN_COLUMNS} FROM claimed ORDER BY priority DESC, claims, id
"""  # noqa: S608


# -- the direct start (POST /runs/{id}/start) takes the same locks -----------------------

# Lock the run's workflow row (if it has max_concurrency) and its named limit's
# row (if any), waiting for them - a start is one run, asked for by id - in the
# claim's order (limit, then workflow). Returns the run's workflow, or no row
# when the run is not visible.
LOCK_START_SLOTS: Final[LiteralString] = """
WITH run AS (
    SELECT w.id, w.max_concurrency, w.concurrency_limit_id, r.status
    FROM workflow_runs r JOIN workflows w ON w.id = r.workflow_id
    WHERE r.id = $1 AND ($2::uuid IS NULL OR w.owner_id = $2)
), named AS (
    SELECT l.id FROM concurrency_limits l
    WHERE l.id = (SELECT concurrency_limit_id FROM run)
    FOR NO KEY UPDATE
), capped AS (
    SELECT w.id FROM workflows w
    WHERE w.id = (SELECT id FROM run WHERE max_concurrency IS NOT NULL)
    FOR NO KEY UPDATE
)
SELECT run.id AS workflow_id, run.status,
    (SELECT count(*) FROM named) + (SELECT count(*) FROM capped) AS locks
FROM run
"""

# The free slots of one workflow (and its limit): a new snapshot, after LOCK_START_SLOTS.
START_SLOTS: Final[LiteralString] = f"""
{_SLOTS}
WHERE w.id = $1
"""


# -- why a queued run waits ----------------------------------------------------------

# For GET /runs/{{id}}: a queued run's due time and the free slots of its
# workflow and named limit (no lock: a hint, stale as soon as it is read).
WAITING: Final[LiteralString] = f"""
SELECT r.status, {DUE_AT} > now() AS not_due, s.workflow_free, s.limit_free, s.limit_name
FROM workflow_runs r JOIN ({_SLOTS}) s ON s.workflow_id = r.workflow_id
WHERE r.id = $1
"""  # noqa: S608


# -- retries ----------------------------------------------------------------------------

# The retry policy of an attempt's step (NULL once the step was removed).
STEP_RETRY_POLICY: Final[LiteralString] = """
SELECT retry_policy FROM workflow_steps WHERE id = $1
"""

_RETRY_SCHEDULED: Final[LiteralString] = outbox.insert_from(
    "waiting c",
    aggregate_type=events.WORKFLOW_RUN,
    aggregate_id="c.id",
    event_type="'run.retry_scheduled'",
    payload=outbox.run_payload_sql("c", "'running'", "run.retry_scheduled"),
)

# A claimed running run back to the queue until $2 seconds from now (the backoff):
# awaiting_retry, its lease released, the failure ($3) kept as its error, with
# its run.retry_scheduled event. Its caller holds the run's row lock.
SCHEDULE_RETRY: Final[LiteralString] = f"""
WITH waiting AS (
    UPDATE workflow_runs r SET
        status = 'awaiting_retry',
        next_attempt_at = clock_timestamp() + make_interval(secs => $2::float8),
        heartbeat_at = NULL,
        claimed_by = NULL,
        error = $3::text
    WHERE r.id = $1 AND r.status = 'running' AND r.claimed_by IS NOT NULL
    RETURNING {RUN_COLUMNS_OF_R}
), event AS (
    {_RETRY_SCHEDULED}
)
SELECT {RUN_COLUMNS} FROM waiting
"""  # noqa: S608
