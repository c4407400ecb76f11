"""Run operations: trigger, lifecycle transitions, listing, reading, step attempts.

Every function runs in the caller's transaction (``DB.require_transaction()``)
and never commits. They are the hot paths of the platform, so each is
parameterised SQL on the transaction's connection, one round trip where one is
enough: a run and its ``run.*`` event are written by one statement (a
data-modifying CTE), JSON columns are decoded once, and rows come back as dicts.

``owner_id`` limits an operation to the runs of workflows that user owns (None:
no limit, for admins); a run outside that limit is reported as not found.

Lifecycle (``RunStatus``)::

    pending -> running -> completed | failed | cancelled
    pending -> cancelled

A transition is one compare-and-set ``UPDATE ... WHERE status = ANY(allowed)``:
of two concurrent transitions of one run, the second waits for the first's row
lock, re-checks the status the first wrote, and matches nothing, so exactly one
wins and the other gets :class:`InvalidTransitionError` naming the state it found.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, LiteralString, cast
from uuid import UUID

from piccolo.query.base import Query
from piccolo.query.proxy import Proxy

from flowforge.core.errors import (
    IdempotencyConflictError,
    InvalidTransitionError,
    NotFoundError,
    WorkflowInactiveError,
)
from flowforge.core.json import dumps, loads
from flowforge.db.builder import Param, column_list, compiled
from flowforge.db.engine import DB
from flowforge.db.tables import RunStatus, RunStepLog, TriggerType, Workflow, WorkflowRun
from flowforge.domain.pagination import DEFAULT_LIMIT, decode_cursor, page
from flowforge.domain.records import RunRecord, RunWithLogs, StepLogRecord
from flowforge.domain.workflows import visible_workflow
from flowforge.outbox import events
from flowforge.outbox import writer as outbox

# Error-path and idempotency reads use the query builder on these columns.
RUN_TABLE_COLUMNS: Final = (
    WorkflowRun.id,
    WorkflowRun.workflow_id,
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


def _run(row: Mapping[str, Any], *, drop: tuple[str, ...] = ()) -> RunRecord:
    """A run row as its record: JSONB decoded, the statement's other columns (`drop`) left out."""
    run = dict(row)
    for key in drop:
        del run[key]
    run["inputs"] = loads(run["inputs"])
    if run["outputs"] is not None:
        run["outputs"] = loads(run["outputs"])
    return cast(RunRecord, run)


def _log(values: Mapping[str, Any]) -> StepLogRecord:
    log = dict(values)
    for key in ("input", "output"):
        if log[key] is not None:
            log[key] = loads(log[key])
    return cast(StepLogRecord, log)


# -- trigger ----------------------------------------------------------------------------

# One statement: check the workflow (visible, active), insert the run unless its
# idempotency key is taken, write run.created for a new run, and return either
# the new run (created = true) or the run that already holds the key.
_RUN_CREATED_EVENT: Final[LiteralString] = outbox.insert_from(
    "created c",
    aggregate_type=events.WORKFLOW_RUN,
    aggregate_id="c.id",
    event_type="'run.created'",
    payload=events.run_payload_sql("c", "NULL", "run.created"),
)
TRIGGER_RUN: Final[LiteralString] = f"""
WITH wf AS (
    SELECT id, is_active FROM workflows
    WHERE id = $1 AND ($6::uuid IS NULL OR owner_id = $6)
), created AS (
    INSERT INTO workflow_runs (workflow_id, trigger_type, triggered_by_user_id, inputs,
                               idempotency_key)
    SELECT wf.id, $2, $3, $4::jsonb, $5 FROM wf WHERE wf.is_active
    ON CONFLICT ON CONSTRAINT workflow_runs_workflow_idempotency_key DO NOTHING
    RETURNING {RUN_COLUMNS}
), event AS (
    {_RUN_CREATED_EVENT}
)
SELECT true AS created, true AS same_request, {RUN_COLUMNS} FROM created
UNION ALL
SELECT false, r.inputs = $4::jsonb AND r.trigger_type = $2, {RUN_COLUMNS_OF_R}
FROM workflow_runs r JOIN wf ON r.workflow_id = wf.id
WHERE $5::text IS NOT NULL AND r.idempotency_key = $5 AND NOT EXISTS (SELECT 1 FROM created)
"""  # noqa: S608 - constant fragments; every value is a bind parameter

# The run that holds an idempotency key, read in a new snapshot, with whether
# the retry is the same request: PostgreSQL compares the inputs as the JSONB it
# stores (the builder cannot select that comparison).
RUN_BY_KEY: Final[LiteralString] = f"""
SELECT inputs = $3::jsonb AND trigger_type = $4 AS same_request, {RUN_COLUMNS}
FROM workflow_runs WHERE workflow_id = $1 AND idempotency_key = $2
"""  # noqa: S608 - constant fragments; every value is a bind parameter


async def trigger_run(
    workflow_id: UUID,
    *,
    inputs: Mapping[str, Any],
    trigger_type: TriggerType = TriggerType.MANUAL,
    triggered_by: UUID | None = None,
    idempotency_key: str | None = None,
    owner_id: UUID | None = None,
) -> tuple[RunRecord, bool]:
    """Create a pending run and its ``run.created`` event; returns (run, created).

    With an ``idempotency_key`` already used for this workflow, returns the
    existing run and ``created=False`` when the inputs and trigger type match,
    and raises :class:`IdempotencyConflictError` when they do not.
    """
    connection = DB.require_transaction().connection
    inputs_json = dumps(inputs)
    row = await connection.fetchrow(
        TRIGGER_RUN,
        workflow_id,
        trigger_type.value,
        triggered_by,
        inputs_json,
        idempotency_key,
        owner_id,
    )
    extra: tuple[str, ...]  # the statement's columns that are not the run's
    if row is None:
        state = (
            await Workflow.select(Workflow.is_active)
            .where(visible_workflow(workflow_id, owner_id))
            .first()
            .run()
        )
        if state is None:
            raise NotFoundError("Workflow not found.", workflow_id=str(workflow_id))
        if not state["is_active"]:
            raise WorkflowInactiveError(workflow_id=str(workflow_id))
        # The key was taken by a transaction that committed after this
        # statement's snapshot was taken: read it now (a new snapshot).
        row = await connection.fetchrow(
            RUN_BY_KEY, workflow_id, idempotency_key, inputs_json, trigger_type.value
        )
        if row is None:  # pragma: no cover - the key's holder rolled back: a retry will work
            raise IdempotencyConflictError(
                "A request with this Idempotency-Key is in progress; retry shortly.",
                idempotency_key=idempotency_key,
            )
        created, extra = False, ("same_request",)
    else:
        created, extra = bool(row["created"]), ("created", "same_request")
    # PostgreSQL compares the inputs as the JSONB it stores: numbers it
    # normalises (1e16, -0.0, 1.0) match their stored form; true is not 1.
    same_request = bool(row["same_request"])
    run = _run(row, drop=extra)
    if not created and not same_request:
        raise IdempotencyConflictError(
            "This Idempotency-Key was already used for this workflow with different inputs.",
            idempotency_key=idempotency_key,
            run_id=str(run["id"]),
        )
    return run, created


# -- transitions -------------------------------------------------------------------------

# action -> (new status, statuses it may leave)
TRANSITIONS: Final[dict[str, tuple[RunStatus, tuple[RunStatus, ...]]]] = {
    "start": (RunStatus.RUNNING, (RunStatus.PENDING,)),
    "complete": (RunStatus.COMPLETED, (RunStatus.RUNNING,)),
    "fail": (RunStatus.FAILED, (RunStatus.RUNNING,)),
    "cancel": (RunStatus.CANCELLED, (RunStatus.PENDING, RunStatus.RUNNING)),
}

# Compare-and-set: the new status, timestamps that satisfy
# workflow_runs_timestamps_match_status, and the run.<status> event, in one
# statement. A run that ends then closes its open step attempts (CLOSE_ATTEMPTS).
# previous_status: when only one status may be left it is that one; otherwise
# (cancel) the run had started iff started_at is set (the same CHECK).
# The event of a transition: run.started, .completed, .failed and .cancelled
# share one payload shape (the event type is $7).
_TRANSITION_EVENT: Final[LiteralString] = outbox.insert_from(
    "changed c",
    aggregate_type=events.WORKFLOW_RUN,
    aggregate_id="c.id",
    event_type="$7",
    payload=events.run_payload_sql(
        "c",
        "CASE WHEN cardinality($3::text[]) = 1 THEN ($3::text[])[1] "
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
    RETURNING {RUN_COLUMNS_OF_R}
), event AS (
    {_TRANSITION_EVENT}
)
SELECT {RUN_COLUMNS} FROM changed
"""  # noqa: S608

# A separate statement on purpose: it runs after the transition holds the run's
# row lock and takes a new snapshot, so it also sees an attempt whose append
# committed while the transition waited for that lock (in the transition's own
# snapshot that attempt does not exist yet, and it would stay "running" forever).
# Its finished_at is clock_timestamp() for the same reason as the transition's:
# such an attempt started after this transaction's now(), but before this
# statement (appends take the run's lock, which we hold now).
# run_created_at (the partition key) confines it to the run's partition.
CLOSE_ATTEMPTS: Final[LiteralString] = """
UPDATE run_step_logs SET status = 'cancelled', finished_at = clock_timestamp()
WHERE run_id = $1 AND run_created_at = $2 AND status IN ('pending', 'running')
"""


async def _run_status(run_id: UUID, owner_id: UUID | None) -> str | None:
    """The run's status (error paths: why a statement matched nothing), or None if not visible."""

    def build() -> Query[Any, Any] | Proxy[Any, Any]:
        query = WorkflowRun.select(WorkflowRun.status).where(WorkflowRun.id == Param("run_id"))
        if owner_id is not None:
            query = query.where(WorkflowRun.workflow_id._.owner_id == Param("owner_id"))
        return query.first()

    row = await compiled(("runs.status", owner_id is not None), build).first(
        run_id=run_id, owner_id=owner_id
    )
    return None if row is None else str(row["status"])


async def transition_run(
    run_id: UUID,
    action: str,
    *,
    error: str | None = None,
    outputs: Mapping[str, Any] | None = None,
    owner_id: UUID | None = None,
) -> RunRecord:
    """Apply `action` (start, complete, fail, cancel) to a run and write its event.

    ``error`` is required to fail a run (it is the run's error) and optional
    to cancel it (the reason); ``outputs`` is recorded when a run completes.
    Raises :class:`InvalidTransitionError` (naming the current and requested
    states) when the run's status does not allow `action`.
    """
    target, allowed = TRANSITIONS[action]
    if target is RunStatus.FAILED and not error:
        raise ValueError("a failed run must record its error")
    connection = DB.require_transaction().connection
    row = await connection.fetchrow(
        TRANSITION_RUN,
        run_id,
        target.value,
        [status.value for status in allowed],
        error,
        dumps(outputs) if outputs is not None else None,
        owner_id,
        events.RUN_EVENT_BY_STATUS[target.value],
    )
    if row is None:
        current = await _run_status(run_id, owner_id)
        if current is None:
            raise NotFoundError("Run not found.", run_id=str(run_id))
        raise InvalidTransitionError(
            f"Cannot {action} a run that is {current}: only a "
            f"{' or '.join(status.value for status in allowed)} run can become {target.value}.",
            run_id=str(run_id),
            current_status=current,
            requested_status=target.value,
        )
    if target is not RunStatus.RUNNING:
        await connection.execute(CLOSE_ATTEMPTS, run_id, row["created_at"])
    return _run(row)


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


async def get_run(run_id: UUID, *, owner_id: UUID | None = None) -> RunWithLogs:
    """A run with its step attempts (by step position, then attempt)."""
    connection = DB.require_transaction().connection
    row = await connection.fetchrow(GET_RUN, run_id, owner_id)
    if row is None:
        raise NotFoundError("Run not found.", run_id=str(run_id))
    logs = [_log(dict(zip(LOG_FIELDS, values, strict=True))) for values in row["step_logs"]]
    return {**_run(row, drop=("step_logs",)), "step_logs": logs}


# Bind parameter placeholders as literals, so composed SQL stays a LiteralString.
PARAMETERS: Final[tuple[LiteralString, ...]] = ("$0", "$1", "$2", "$3", "$4", "$5", "$6", "$7")
_LIST_RUNS_CACHE: dict[tuple[bool, bool, bool], LiteralString] = {}


def _list_runs_sql(by_status: bool, after: bool, by_owner: bool) -> LiteralString:
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


async def list_runs(
    workflow_id: UUID,
    *,
    status: RunStatus | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
    owner_id: UUID | None = None,
) -> tuple[list[RunRecord], str | None]:
    """A page of a workflow's runs, newest first; returns (runs, next cursor or None)."""
    position = decode_cursor(cursor)
    sql = _list_runs_sql(status is not None, position is not None, owner_id is not None)
    args: list[Any] = [workflow_id, limit + 1]
    if status is not None:
        args.append(status.value)
    if position is not None:
        args.extend(position)
    if owner_id is not None:
        args.append(owner_id)
    connection = DB.require_transaction().connection
    rows = await connection.fetch(sql, *args)
    if not rows:
        raise NotFoundError("Workflow not found.", workflow_id=str(workflow_id))
    runs = [_run(row, drop=("visible_workflow_id",)) for row in rows if row["id"] is not None]
    return page(runs, limit)


# -- step attempts -----------------------------------------------------------------------

# Lock the run (serialising attempt numbering for it), check it is running, and
# renew its lease: a logged attempt is a heartbeat (flowforge/jobs/reaper.py fails
# running runs whose heartbeat_at is older than RUN_LEASE_TIMEOUT).
LOCK_RUNNING_RUN: Final[LiteralString] = """
UPDATE workflow_runs r SET heartbeat_at = clock_timestamp()
WHERE r.id = $1 AND r.status = 'running'
  AND ($2::uuid IS NULL OR EXISTS (
      SELECT 1 FROM workflows w WHERE w.id = r.workflow_id AND w.owner_id = $2))
RETURNING r.workflow_id
"""


def _step_logged_event(source: LiteralString) -> LiteralString:
    """The run.step_logged event of each step-log row in `source` (aliased ``l``)."""
    return outbox.insert_from(
        source,
        aggregate_type=events.WORKFLOW_RUN,
        aggregate_id="l.run_id",
        event_type="'run.step_logged'",
        payload=events.step_logged_payload_sql("l", "$2::uuid"),
    )


# A separate statement from the lock on purpose: it takes a new snapshot, so
# max(attempt) sees attempts committed by whoever held the lock before us.
APPEND_STEP_LOG: Final[LiteralString] = f"""
WITH step AS (
    SELECT id, position, name FROM workflow_steps WHERE workflow_id = $2 AND position = $3
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


# Statuses an attempt may be logged with, and may finish with.
ATTEMPT_STATUSES: Final = frozenset({RunStatus.RUNNING, RunStatus.COMPLETED, RunStatus.FAILED})
FINISHED_ATTEMPT_STATUSES: Final = frozenset({RunStatus.COMPLETED, RunStatus.FAILED})


async def _lock_running_run(run_id: UUID, owner_id: UUID | None, what: str) -> UUID:
    """Lock a running run and renew its lease; 404 / 409 (naming its status) otherwise."""
    connection = DB.require_transaction().connection
    workflow_id: UUID | None = await connection.fetchval(LOCK_RUNNING_RUN, run_id, owner_id)
    if workflow_id is None:
        current = await _run_status(run_id, owner_id)
        if current is None:
            raise NotFoundError("Run not found.", run_id=str(run_id))
        raise InvalidTransitionError(
            f"{what} only while the run is running; it is {current}.",
            run_id=str(run_id),
            current_status=current,
            requested_status=RunStatus.RUNNING.value,
        )
    return workflow_id


async def heartbeat_run(run_id: UUID, *, owner_id: UUID | None = None) -> None:
    """Renew a running run's lease, so the reaper does not fail it.

    Executors call this while a long step runs (every logged attempt renews
    the lease too); 409 once the run is no longer running (e.g. reaped).
    """
    await _lock_running_run(run_id, owner_id, "A run sends heartbeats")


async def append_step_log(
    run_id: UUID,
    *,
    step_position: int,
    status: RunStatus = RunStatus.RUNNING,
    input: Mapping[str, Any] | None = None,
    output: Mapping[str, Any] | None = None,
    error: str | None = None,
    started_at: Any = None,
    owner_id: UUID | None = None,
) -> StepLogRecord:
    """Log the next attempt of the step at `step_position` of a running run.

    The attempt number is the step's last attempt + 1, assigned under the
    run's row lock, so concurrent appends never collide. The step's name and
    position are copied into the log (they survive later edits of the
    workflow). ``started_at`` (default: now) is capped at now; an attempt
    logged as completed or failed is finished now.
    """
    if status not in ATTEMPT_STATUSES:
        raise ValueError(f"an attempt cannot be logged as {status}")
    workflow_id = await _lock_running_run(run_id, owner_id, "Step attempts can be logged")
    connection = DB.require_transaction().connection
    row = await connection.fetchrow(
        APPEND_STEP_LOG,
        run_id,
        workflow_id,
        step_position,
        status.value,
        dumps(input) if input is not None else None,
        dumps(output) if output is not None else None,
        error,
        started_at,
    )
    if row is None:
        raise NotFoundError(
            f"The run's workflow has no step at position {step_position}.",
            run_id=str(run_id),
            step_position=step_position,
        )
    return _log(row)


async def finish_step_log(
    run_id: UUID,
    step_log_id: UUID,
    *,
    status: RunStatus,
    output: Mapping[str, Any] | None = None,
    error: str | None = None,
    owner_id: UUID | None = None,
) -> StepLogRecord:
    """Finish a running attempt as completed or failed (the run must be running)."""
    if status not in FINISHED_ATTEMPT_STATUSES:
        raise ValueError(f"an attempt cannot finish as {status}")
    workflow_id = await _lock_running_run(run_id, owner_id, "Step attempts can be finished")
    connection = DB.require_transaction().connection
    row = await connection.fetchrow(
        FINISH_STEP_LOG,
        run_id,
        workflow_id,
        status.value,
        dumps(output) if output is not None else None,
        error,
        step_log_id,
    )
    if row is None:
        attempt = (
            await RunStepLog.select(RunStepLog.status)
            .where(RunStepLog.id == step_log_id, RunStepLog.run_id == run_id)
            .first()
            .run()
        )
        if attempt is None:
            raise NotFoundError("Step attempt not found.", step_log_id=str(step_log_id))
        current = attempt["status"]
        raise InvalidTransitionError(
            f"Only a running attempt can finish; this one is {current}.",
            step_log_id=str(step_log_id),
            current_status=current,
            requested_status=status.value,
        )
    return _log(row)
