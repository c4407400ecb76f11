"""The run statements: trigger, transitions, reads, step attempts (flowforge.domain.runs).

The hot paths of the platform, so each is one round trip where one is
enough: a run or step attempt and its ``run.*`` event are written by one
data-modifying CTE (the event through :func:`flowforge.db.sql.outbox.insert_from`,
its payload built from the event contract's key lists). Column lists come
from the Table classes.
"""

from __future__ import annotations

from typing import Final, LiteralString

from flowforge.core import events
from flowforge.db.sql import outbox
from flowforge.db.sql.quote import column_list
from flowforge.db.tables import RunStepLog, WorkflowRun

# The run row the statements below return, from the Table (a renamed column renames it).
RUN_TABLE_COLUMNS: Final = (
    WorkflowRun.id,
    WorkflowRun.workflow_id,
    WorkflowRun.workflow_version,
    WorkflowRun.status,
    WorkflowRun.trigger_type,
    WorkflowRun.triggered_by_user_id,
    WorkflowRun.inputs,
    WorkflowRun.outputs,
    WorkflowRun.error,
    WorkflowRun.idempotency_key,
    WorkflowRun.started_at,
    WorkflowRun.finished_at,
    WorkflowRun.created_at,
    WorkflowRun.updated_at,
    # The run queue (issue 18).
    WorkflowRun.priority,
    WorkflowRun.not_before,
    WorkflowRun.next_attempt_at,
    WorkflowRun.claimed_by,
    WorkflowRun.claims,
)
RUN_COLUMNS: Final = column_list(*RUN_TABLE_COLUMNS)
LOG_TABLE_COLUMNS: Final = (
    RunStepLog.id,
    RunStepLog.run_id,
    RunStepLog.step_id,
    RunStepLog.step_position,
    RunStepLog.step_name,
    RunStepLog.attempt,
    RunStepLog.status,
    RunStepLog.input,
    RunStepLog.output,
    RunStepLog.error,
    RunStepLog.started_at,
    RunStepLog.finished_at,
    RunStepLog.created_at,
    RunStepLog.updated_at,
)
LOG_COLUMNS: Final = column_list(*LOG_TABLE_COLUMNS)
LOG_FIELDS: Final = tuple(column._meta.db_column_name for column in LOG_TABLE_COLUMNS)
RUN_COLUMNS_OF_R: Final = column_list(*RUN_TABLE_COLUMNS, alias="r")

# -- trigger ----------------------------------------------------------------------------

# One statement: check the workflow (visible, active), pin the version ($7, or
# the workflow's current one when NULL; a named version must exist), insert the
# run unless its idempotency key is taken, write run.created for a new run, and
# return either the new run (created = true) or the run that already holds the
# key. The default (latest) path reads the version from the workflow row it
# reads anyway: no extra lookup; the composite foreign key
# workflow_runs_workflow_version_fkey checks it.
_RUN_CREATED_EVENT: Final[LiteralString] = outbox.insert_from(
    "created c",
    aggregate_type=events.WORKFLOW_RUN,
    aggregate_id="c.id",
    event_type="'run.created'",
    payload=outbox.run_payload_sql("c", "NULL", "run.created"),
)
TRIGGER_RUN: Final[LiteralString] = f"""
WITH wf AS (
    SELECT id, is_active, coalesce($7::int, version) AS pinned FROM workflows
    WHERE id = $1 AND ($6::uuid IS NULL OR owner_id = $6)
), created AS (
    INSERT INTO workflow_runs (workflow_id, workflow_version, trigger_type, triggered_by_user_id,
                               inputs, idempotency_key,
                               priority, not_before)  -- the run queue (issue 18)
    SELECT wf.id, wf.pinned, $2, $3, $4::jsonb, $5, $8::int, $9::timestamptz FROM wf
    WHERE wf.is_active AND ($7::int IS NULL OR EXISTS (
        SELECT 1 FROM workflow_versions v WHERE v.workflow_id = wf.id AND v.version = $7))
    ON CONFLICT ON CONSTRAINT workflow_runs_workflow_idempotency_key DO NOTHING
    RETURNING {RUN_COLUMNS}
), event AS (
    {_RUN_CREATED_EVENT}
)
SELECT true AS created, true AS same_request, {RUN_COLUMNS} FROM created
UNION ALL
SELECT false, r.inputs = $4::jsonb AND r.trigger_type = $2
    AND ($7::int IS NULL OR r.workflow_version = $7), {RUN_COLUMNS_OF_R}
FROM workflow_runs r JOIN wf ON r.workflow_id = wf.id
WHERE $5::text IS NOT NULL AND r.idempotency_key = $5 AND NOT EXISTS (SELECT 1 FROM created)
"""  # noqa: S608 - constant fragments; every value is a bind parameter


# The run that holds an idempotency key, read in a new snapshot, with whether
# the retry is the same request: PostgreSQL compares the inputs as the JSONB it
# stores (the builder cannot select that comparison).
RUN_BY_KEY: Final[LiteralString] = f"""
SELECT inputs = $3::jsonb AND trigger_type = $4
    AND ($5::int IS NULL OR workflow_version = $5) AS same_request, {RUN_COLUMNS}
FROM workflow_runs WHERE workflow_id = $1 AND idempotency_key = $2
"""  # noqa: S608 - constant fragments; every value is a bind parameter


# -- transitions -------------------------------------------------------------------------

# A start ($8 true) first tries the run as a run of a workflow under no
# concurrency limit: one statement, no lock but the run's. When that matches
# nothing, flowforge.domain.limits.reserve_start_slot locks the limits and
# counts the free slots, and the start runs again with $8 false. A limit set
# while a start is under way applies to the starts after its commit.
# Compare-and-set: the new status, timestamps that satisfy
# workflow_runs_timestamps_match_status, and the run.<status> event, in one
# statement. A run that ends then closes its open step attempts (CLOSE_ATTEMPTS, below).
# previous_status: when only one status may be left it is that one; otherwise
# (cancel) the run had started iff started_at is set (the same CHECK).
# The event of a transition: run.started, .completed, .failed and .cancelled
# share one payload shape (the event type is $7).
_TRANSITION_EVENT: Final[LiteralString] = outbox.insert_from(
    "changed c",
    aggregate_type=events.WORKFLOW_RUN,
    aggregate_id="c.id",
    event_type="$7",
    payload=outbox.run_payload_sql(
        "c",
        "CASE WHEN cardinality($3::text[]) = 1 THEN ($3::text[])[1] "
        "WHEN c.next_attempt_at IS NOT NULL THEN 'awaiting_retry' "
        "WHEN c.started_at IS NULL THEN 'pending' ELSE 'running' END",
        "run.started",
    ),
)
# The moment of a transition is clock_timestamp(), read once this statement
# holds the run's row lock (a row changed while it waited is recomputed after
# the wait), never now(): now() is when this *transaction* began, and a start or
# an append that began later may have taken the lock first and committed a
# started_at after it. Stamped with now(), the end of that run or attempt came
# before its start and the CHECK refused the end: a run could not end while
# attempts were being appended (issue 15). Every start an end can meet committed
# before the end held the lock, so its own clock reading is later.
# GREATEST(now(), started_at) would pass too, but by construction: it records
# an end that did not happen then, and turns the CHECK into a tautology that
# could no longer catch a writer that bypasses the run's lock.
TRANSITION_RUN: Final[LiteralString] = f"""
WITH changed AS (
    UPDATE workflow_runs r SET
        status = $2::text,
        started_at = CASE WHEN $2::text = 'running' THEN clock_timestamp() ELSE r.started_at END,
        finished_at = CASE WHEN $2::text = 'running' THEN NULL ELSE clock_timestamp() END,
        error = CASE WHEN $2::text IN ('failed', 'cancelled') THEN $4::text ELSE r.error END,
        outputs = CASE WHEN $2::text = 'completed' THEN $5::jsonb ELSE r.outputs END
    WHERE r.id = $1 AND r.status = ANY($3::text[])
      AND ($6::uuid IS NULL OR EXISTS (
          SELECT 1 FROM workflows w WHERE w.id = r.workflow_id AND w.owner_id = $6))
      -- $8: only a run of a workflow under no concurrency limit (a start's fast path).
      AND (NOT $8::boolean OR NOT EXISTS (
          SELECT 1 FROM workflows w WHERE w.id = r.workflow_id
              AND (w.max_concurrency IS NOT NULL OR w.concurrency_limit_id IS NOT NULL)))
    RETURNING {RUN_COLUMNS_OF_R}
), event AS (
    {_TRANSITION_EVENT}
)
SELECT {RUN_COLUMNS} FROM changed
"""  # noqa: S608


# -- reading -----------------------------------------------------------------------------

# The run, its workflow's owner, and its step attempts in order, in one query
# (the attempts as an array of rows: no JSON round trip, native types).
GET_RUN: Final[LiteralString] = f"""
SELECT {RUN_COLUMNS_OF_R},
    ARRAY(SELECT ROW({LOG_COLUMNS}) FROM run_step_logs l
          WHERE l.run_id = r.id AND l.run_created_at = r.created_at
          ORDER BY l.step_position, l.attempt) AS step_logs
FROM workflow_runs r JOIN workflows w ON w.id = r.workflow_id
WHERE r.id = $1 AND ($2::uuid IS NULL OR w.owner_id = $2)
"""  # noqa: S608


# Bind parameter placeholders as literals, so composed SQL stays a LiteralString.
PARAMETERS: Final[tuple[LiteralString, ...]] = ("$0", "$1", "$2", "$3", "$4", "$5", "$6", "$7")


_LIST_RUNS_CACHE: dict[tuple[bool, bool, bool], LiteralString] = {}


def list_runs_sql(by_status: bool, after: bool, by_owner: bool) -> LiteralString:
    """One SQL text per filter combination, so each gets a plan that uses its index.

    (A single text with ``$n IS NULL OR ...`` would get a generic plan that
    cannot use the status column of the composite index.) Parameters, in
    order: workflow id, limit, [status], [created_at, id], [owner id]. The
    workflow is joined laterally: no row at all means "workflow not found or
    not yours"; one row of NULLs means "no runs".
    """
    key = (by_status, after, by_owner)
    if key not in _LIST_RUNS_CACHE:
        # $1, not w.id: the planner then estimates the runs of *this*
        # workflow (w.id would be planned with the average workflow's
        # share, and a busy workflow's page sorted after a bitmap scan;
        # tests/test_explain.py caught it).
        conditions: list[LiteralString] = ["r.workflow_id = $1"]
        number = 2
        if by_status:
            number += 1
            conditions.append(f"r.status = {PARAMETERS[number]}")
        if after:
            conditions.append(
                f"(r.created_at, r.id) < ({PARAMETERS[number + 1]}, {PARAMETERS[number + 2]})"
            )
            number += 2
        owner = f"AND w.owner_id = {PARAMETERS[number + 1]}" if by_owner else ""
        _LIST_RUNS_CACHE[key] = f"""
SELECT w.id AS visible_workflow_id, {RUN_COLUMNS_OF_R}
FROM workflows w LEFT JOIN LATERAL (
    SELECT {RUN_COLUMNS} FROM workflow_runs r
    WHERE {" AND ".join(conditions)}
    ORDER BY r.created_at DESC, r.id DESC
    LIMIT $2
) r ON true
WHERE w.id = $1 {owner}
"""  # noqa: S608
    return _LIST_RUNS_CACHE[key]


# -- step attempts -----------------------------------------------------------------------

# Lock the run (serialising attempt numbering for it), check it is running, and
# renew its lease: a logged attempt is a heartbeat (flowforge/jobs/reaper.py fails
# running runs whose heartbeat_at is older than RUN_LEASE_TIMEOUT).
LOCK_RUNNING_RUN: Final[LiteralString] = """
UPDATE workflow_runs r SET heartbeat_at = clock_timestamp()
WHERE r.id = $1 AND r.status = 'running'
  AND ($2::uuid IS NULL OR EXISTS (
      SELECT 1 FROM workflows w WHERE w.id = r.workflow_id AND w.owner_id = $2))
RETURNING r.workflow_id, r.workflow_version
"""


def _step_logged_event(
    source: LiteralString, workflow_id: LiteralString = "$2::uuid"
) -> LiteralString:
    """The run.step_logged event of each step-log row in `source` (aliased ``l``)."""
    return outbox.insert_from(
        source,
        aggregate_type=events.WORKFLOW_RUN,
        aggregate_id="l.run_id",
        event_type="'run.step_logged'",
        payload=outbox.step_logged_payload_sql("l", workflow_id),
    )


# A separate statement on purpose: it runs after the transition holds the run's
# row lock and takes a new snapshot, so it also sees an attempt whose append
# committed while the transition waited for that lock (in the transition's own
# snapshot that attempt does not exist yet, and it would stay "running" forever).
# Its finished_at is clock_timestamp() for the same reason as the transition's:
# such an attempt started after this transaction's now(), but before this
# statement (appends take the run's lock, which we hold now).
# run_created_at (the partition key) confines it to the run's partition.
# Each closed attempt records why ($3: "run completed", "run failed", "run
# cancelled") as its error, which its run.step_logged event (written by the same
# statement; $4 is the workflow) and its run_history row (the trigger) carry:
# a consumer sees the attempt end with its run instead of running forever.
CLOSE_ATTEMPTS: Final[LiteralString] = f"""
WITH closed AS (
    UPDATE run_step_logs SET status = 'cancelled', finished_at = clock_timestamp(), error = $3
    WHERE run_id = $1 AND run_created_at = $2 AND status IN ('pending', 'running')
    RETURNING {LOG_COLUMNS}
), event AS (
    {_step_logged_event("closed l", "$4::uuid")}
)
SELECT count(*) AS closed FROM closed
"""  # noqa: S608


# A separate statement from the lock on purpose: it takes a new snapshot, so
# max(attempt) sees attempts committed by whoever held the lock before us.
# The step is the one at $3 in the version the run is pinned to ($9, from the
# lock): steps are immutable and never deleted while the workflow has runs, so
# a definition changed meanwhile cannot make the step vanish (issue 17).
APPEND_STEP_LOG: Final[LiteralString] = f"""
WITH step AS (
    SELECT id, position, name FROM workflow_steps
    WHERE workflow_id = $2 AND version = $9 AND position = $3
), run AS (
    SELECT created_at FROM workflow_runs WHERE id = $1
), logged AS (
    -- run_created_at: the partition key (all of a run's attempts share a partition).
    INSERT INTO run_step_logs (run_id, run_created_at, step_id, step_position, step_name,
                               attempt, status, input, output, error, started_at, finished_at)
    SELECT $1, run.created_at, s.id, s.position, s.name,
        coalesce((SELECT max(attempt) FROM run_step_logs
                  WHERE run_id = $1 AND run_created_at = run.created_at
                      AND step_position = $3), 0) + 1,
        $4::text, $5::jsonb, $6::jsonb, $7::text,
        least(coalesce($8::timestamptz, now()), now()),
        CASE WHEN $4::text = 'running' THEN NULL ELSE now() END
    FROM step s, run
    RETURNING {LOG_COLUMNS}
), event AS (
    {_step_logged_event("logged l")}
)
SELECT {LOG_COLUMNS} FROM logged
"""  # noqa: S608


FINISH_STEP_LOG: Final[LiteralString] = f"""
WITH finished AS (
    UPDATE run_step_logs SET status = $3, output = $4::jsonb, error = $5, finished_at = now()
    WHERE id = $6 AND run_id = $1 AND status = 'running'
    RETURNING {LOG_COLUMNS}
), event AS (
    {_step_logged_event("finished l")}
)
SELECT {LOG_COLUMNS} FROM finished
"""  # noqa: S608
