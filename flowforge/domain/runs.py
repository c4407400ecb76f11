"""Run operations: trigger, lifecycle transitions, listing, reading, step attempts.

Every function runs in the caller's transaction (``DB.require_transaction()``)
and never commits. They are the hot paths of the platform, so each is
parameterised SQL on the transaction's connection, one round trip where one is
enough: a run and its ``run.*`` event are written by one statement (a
data-modifying CTE), JSON columns are decoded once, and rows come back as dicts.
The statements are in :mod:`flowforge.db.sql.runs`.

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

import datetime
from collections.abc import Mapping
from typing import Any, Final, cast
from uuid import UUID

from piccolo.query.base import Query
from piccolo.query.proxy import Proxy

from flowforge.core import events
from flowforge.core.errors import (
    IdempotencyConflictError,
    InvalidTransitionError,
    NotFoundError,
    WorkflowInactiveError,
)
from flowforge.core.json import dumps, loads
from flowforge.db.builder import Param, compiled
from flowforge.db.engine import DB
from flowforge.db.sql.runs import (
    APPEND_STEP_LOG,
    CLOSE_ATTEMPTS,
    FINISH_STEP_LOG,
    GET_RUN,
    LOCK_RUNNING_RUN,
    LOG_FIELDS,
    RUN_BY_KEY,
    TRANSITION_RUN,
    TRIGGER_RUN,
    list_runs_sql,
)
from flowforge.db.tables import RunStatus, RunStepLog, TriggerType, Workflow, WorkflowRun
from flowforge.domain.limits import reserve_start_slot
from flowforge.domain.pagination import DEFAULT_LIMIT, decode_cursor, page
from flowforge.domain.records import RunRecord, RunWithLogs, StepLogRecord
from flowforge.domain.retries import retry_after_failure
from flowforge.domain.workflows import version_exists, visible_workflow


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


async def trigger_run(
    workflow_id: UUID,
    *,
    inputs: Mapping[str, Any],
    trigger_type: TriggerType = TriggerType.MANUAL,
    triggered_by: UUID | None = None,
    idempotency_key: str | None = None,
    owner_id: UUID | None = None,
    version: int | None = None,
    priority: int = 0,
    not_before: datetime.datetime | None = None,
) -> tuple[RunRecord, bool]:
    """Create a pending run and its ``run.created`` event; returns (run, created).

    The run is pinned to workflow version ``version`` (default: the workflow's
    current one); a version the workflow does not have is a :class:`NotFoundError`.
    With an ``idempotency_key`` already used for this workflow, returns the
    existing run and ``created=False`` when the inputs and trigger type (and
    the version, when one is named) match, and raises
    :class:`IdempotencyConflictError` when they do not.
    ``priority`` (-100..100, higher first) and ``not_before`` (not claimed
    before then) order the run in the queue (flowforge.domain.queue).
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
        version,
        priority,
        not_before,
    )
    extra: tuple[str, ...]  # the statement's columns that are not the run's
    if row is None:
        state = (
            await Workflow.select(Workflow.is_active, Workflow.version)
            .where(visible_workflow(workflow_id, owner_id))
            .first()
            .run()
        )
        if state is None:
            raise NotFoundError("Workflow not found.", workflow_id=str(workflow_id))
        if not state["is_active"]:
            raise WorkflowInactiveError(workflow_id=str(workflow_id))
        if version is not None and not await version_exists(workflow_id, version):
            raise NotFoundError(
                f"The workflow has no version {version}; its latest is {state['version']}.",
                workflow_id=str(workflow_id),
                version=version,
                latest_version=state["version"],
            )
        # The key was taken by a transaction that committed after this
        # statement's snapshot was taken: read it now (a new snapshot).
        row = await connection.fetchrow(
            RUN_BY_KEY, workflow_id, idempotency_key, inputs_json, trigger_type.value, version
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
# The first four are transition_run's (the API's /start, /complete, ...); the
# queue's moves (issue 18, flowforge.domain.queue and retries, the reaper) are
# listed too, so this table is the whole state machine (docs/runs.md draws it).
TRANSITIONS: Final[dict[str, tuple[RunStatus, tuple[RunStatus, ...]]]] = {
    "start": (RunStatus.RUNNING, (RunStatus.PENDING,)),
    "complete": (RunStatus.COMPLETED, (RunStatus.RUNNING,)),
    "fail": (RunStatus.FAILED, (RunStatus.RUNNING,)),
    "cancel": (
        RunStatus.CANCELLED,
        (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.AWAITING_RETRY),
    ),
    "claim": (RunStatus.RUNNING, (RunStatus.PENDING, RunStatus.AWAITING_RETRY)),
    "retry": (RunStatus.AWAITING_RETRY, (RunStatus.RUNNING,)),
}
# Moves only the queue makes (not through transition_run).
QUEUE_ACTIONS: Final = frozenset({"claim", "retry"})


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
    if action in QUEUE_ACTIONS:
        raise ValueError(f"{action} is the queue's move, not a transition_run action")
    target, allowed = TRANSITIONS[action]
    if target is RunStatus.FAILED and not error:
        raise ValueError("a failed run must record its error")
    connection = DB.require_transaction().connection
    arguments = (
        run_id,
        target.value,
        [status.value for status in allowed],
        error,
        dumps(outputs) if outputs is not None else None,
        owner_id,
        events.RUN_EVENT_BY_STATUS[target.value],
    )
    starting = target is RunStatus.RUNNING
    # A start tries first as a run of a workflow under no limit (one statement).
    row = await connection.fetchrow(TRANSITION_RUN, *arguments, starting)
    if row is None and starting:
        # Limited (or not startable): under the run's limits' locks until
        # commit, as a claim takes them, so no limit is exceeded.
        await reserve_start_slot(run_id, owner_id)
        row = await connection.fetchrow(TRANSITION_RUN, *arguments, False)
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
        # Each closed attempt gets its run.step_logged event and its history
        # row in the same statement, with why it closed.
        await connection.execute(
            CLOSE_ATTEMPTS, run_id, row["created_at"], f"run {target.value}", row["workflow_id"]
        )
    return _run(row)


# -- reading -----------------------------------------------------------------------------


async def get_run(run_id: UUID, *, owner_id: UUID | None = None) -> RunWithLogs:
    """A run with its step attempts (by step position, then attempt)."""
    connection = DB.require_transaction().connection
    row = await connection.fetchrow(GET_RUN, run_id, owner_id)
    if row is None:
        raise NotFoundError("Run not found.", run_id=str(run_id))
    logs = [_log(dict(zip(LOG_FIELDS, values, strict=True))) for values in row["step_logs"]]
    return {**_run(row, drop=("step_logs",)), "step_logs": logs}


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
    sql = list_runs_sql(status is not None, position is not None, owner_id is not None)
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


# Statuses an attempt may be logged with, and may finish with.
ATTEMPT_STATUSES: Final = frozenset({RunStatus.RUNNING, RunStatus.COMPLETED, RunStatus.FAILED})
FINISHED_ATTEMPT_STATUSES: Final = frozenset({RunStatus.COMPLETED, RunStatus.FAILED})


async def _lock_running_run(run_id: UUID, owner_id: UUID | None, what: str) -> tuple[UUID, int]:
    """Lock a running run and renew its lease; returns its (workflow id, pinned version).

    404 / 409 (naming its status) when it is not visible / not running.
    """
    connection = DB.require_transaction().connection
    locked = await connection.fetchrow(LOCK_RUNNING_RUN, run_id, owner_id)
    if locked is None:
        current = await _run_status(run_id, owner_id)
        if current is None:
            raise NotFoundError("Run not found.", run_id=str(run_id))
        raise InvalidTransitionError(
            f"{what} only while the run is running; it is {current}.",
            run_id=str(run_id),
            current_status=current,
            requested_status=RunStatus.RUNNING.value,
        )
    return locked["workflow_id"], locked["workflow_version"]


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
    workflow_id, version = await _lock_running_run(run_id, owner_id, "Step attempts can be logged")
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
        version,
    )
    if row is None:
        raise NotFoundError(
            f"Version {version} of the run's workflow has no step at position {step_position}.",
            run_id=str(run_id),
            step_position=step_position,
            workflow_version=version,
        )
    if status is RunStatus.FAILED:
        await retry_after_failure(run_id, row["step_id"], row["attempt"], error)
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
    workflow_id, _version = await _lock_running_run(
        run_id, owner_id, "Step attempts can be finished"
    )
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
    if status is RunStatus.FAILED:
        await retry_after_failure(run_id, row["step_id"], row["attempt"], error)
    return _log(row)
