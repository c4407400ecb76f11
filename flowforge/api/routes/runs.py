"""Runs: trigger, list, read, move through the lifecycle, log step attempts."""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Final, Literal
from uuid import UUID

from fastapi import APIRouter, Body, Header, Query, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from flowforge.api.deps import CurrentPrincipal, ReadPrincipal
from flowforge.api.jsonbody import ExactJSONRoute
from flowforge.api.responses import body_encoder, json_response
from flowforge.api.schemas import (
    DEFAULT_PAGE_SIZE,
    Cursor,
    ErrorText,
    JsonObject,
    Limit,
    Page,
    RequestModel,
    StepPosition,
    Timestamp,
    VersionNumber,
    error_responses,
    json_integer,
)
from flowforge.db.tables import RunStatus, Scope, TriggerType
from flowforge.domain import history, queue, runs
from flowforge.domain.principal import Principal

router = APIRouter(
    tags=["runs"], responses=error_responses(401, 403, 422), route_class=ExactJSONRoute
)

LIFECYCLE = (
    "Lifecycle: pending → running → completed | failed | cancelled, and pending → "
    "cancelled; the queue adds running → awaiting_retry → running | cancelled "
    "(docs/runs.md). A start that would exceed a concurrency limit is a 409 "
    "`concurrency_limit`. Any other move (e.g. out of a terminal state, or pending → completed) "
    "is a 409 `invalid_transition` naming the current and requested states; of two "
    "concurrent moves of one run exactly one succeeds."
)


# The bodies of trigger, complete and cancel are optional: no body is the
# model's defaults (`Body(default_factory=...)`). Not `RunTrigger | None`:
# that describes the body as "object or null", and generated clients then send
# their "unset" marker as JSON (openapi-python-client: "Object of type Unset is
# not JSON serializable"). A `null` body is a 422, as the schema says.


Priority = Annotated[
    int,
    Field(ge=-100, le=100, description="Queue order: higher is claimed first (-100..100)."),
    BeforeValidator(json_integer),  # a JSON integer: never true or "3"
]


class RunTrigger(RequestModel):
    inputs: JsonObject = Field(default_factory=dict)
    trigger_type: TriggerType = TriggerType.MANUAL
    version: VersionNumber | None = Field(
        default=None,
        description="The workflow version to run (default: its latest). "
        "A version the workflow does not have is a 404 naming the latest.",
    )
    priority: Priority = 0
    not_before: Timestamp | None = Field(
        default=None, description="Not claimed before this time (a delayed run)."
    )


# Its own name: in RunClaim's annotations `queue` is the field, not the module.
MAX_CLAIM: Final = queue.MAX_CLAIM


class RunClaim(RequestModel):
    worker_id: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")] = (
        Field(description="Who claims: recorded as each run's `claimed_by`.")
    )
    limit: Annotated[int, Field(ge=1, le=MAX_CLAIM), BeforeValidator(json_integer)] = Field(
        default=1, description="At most this many runs."
    )
    workflow_ids: list[UUID] | None = Field(
        default=None, min_length=1, max_length=100, description="Only these workflows' runs."
    )
    queue: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="Only runs of workflows in this queue."
    )


class RunComplete(RequestModel):
    outputs: JsonObject | None = None


class RunFail(RequestModel):
    error: ErrorText = Field(description="Why the run failed (required).")


class RunCancel(RequestModel):
    reason: ErrorText | None = Field(default=None, description="Recorded as the run's error.")


# "error only on a failed attempt, and a failed attempt has one", as JSON Schema.
ERROR_ONLY_WHEN_FAILED: dict[str, Any] = {
    "if": {"required": ["status"], "properties": {"status": {"const": "failed"}}},
    "then": {"required": ["error"], "properties": {"error": {"type": "string"}}},
    "else": {"properties": {"error": {"type": "null"}}},
}


class StepLogAppend(RequestModel):
    model_config = ConfigDict(json_schema_extra=ERROR_ONLY_WHEN_FAILED)

    step_position: StepPosition = Field(description="The step's position.")
    status: Literal["running", "completed", "failed"] = Field(
        default="running",
        description="running (finish it later), completed or failed (finished now).",
    )
    input: JsonObject | None = None
    output: JsonObject | None = None
    error: ErrorText | None = None
    started_at: Timestamp | None = Field(
        default=None, description="When the attempt started (default and at most: now)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> StepLogAppend:
        _check_error(self.status, self.error)
        return self


class StepLogFinish(RequestModel):
    model_config = ConfigDict(json_schema_extra=ERROR_ONLY_WHEN_FAILED)

    status: Literal["completed", "failed"] = Field(description="completed or failed.")
    output: JsonObject | None = None
    error: ErrorText | None = None

    @model_validator(mode="after")
    def _consistent(self) -> StepLogFinish:
        _check_error(self.status, self.error)
        return self


def _check_error(status: str, error: str | None) -> None:
    if status == RunStatus.FAILED and error is None:
        raise ValueError("a failed attempt needs an error")
    if status != RunStatus.FAILED and error is not None:
        raise ValueError("only a failed attempt has an error")


class StepLogOut(BaseModel):
    id: UUID
    run_id: UUID
    step_id: UUID | None = Field(description="Null once the step was removed from the workflow.")
    step_position: int
    step_name: str
    attempt: int
    status: RunStatus
    input: dict[str, Any] | None
    output: dict[str, Any] | None
    error: str | None
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    created_at: datetime.datetime
    updated_at: datetime.datetime


class RunOut(BaseModel):
    id: UUID
    workflow_id: UUID
    workflow_version: int = Field(
        description="The workflow version this run runs: "
        "GET /workflows/{workflow_id}/versions/{workflow_version} shows its steps."
    )
    status: RunStatus
    trigger_type: TriggerType
    triggered_by_user_id: UUID | None
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    error: str | None
    idempotency_key: str | None
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    created_at: datetime.datetime
    updated_at: datetime.datetime = Field(
        description="Also bumped by every logged attempt: a heartbeat of a running run."
    )
    priority: int = Field(description="Queue order: higher is claimed first.")
    not_before: datetime.datetime | None = Field(description="Not claimed before this time.")
    next_attempt_at: datetime.datetime | None = Field(
        description="awaiting_retry: when the retry is due."
    )
    claimed_by: str | None = Field(description="The worker that last claimed the run.")
    claims: int = Field(description="How many times the run was claimed.")


class RunTriggered(RunOut):
    replayed: bool = Field(
        description="True when an earlier request with the same Idempotency-Key made this run."
    )


class RunHistoryOut(BaseModel):
    """One state change of a run, or of one of its step attempts."""

    id: UUID
    run_id: UUID
    step_log_id: UUID | None = Field(
        description="The step attempt that changed; null for a change of the run itself."
    )
    step_position: int | None = Field(description="The attempt's step position (attempts only).")
    attempt: int | None = Field(description="The attempt's number (attempts only).")
    from_status: RunStatus | None = Field(description="Null when the run or attempt was created.")
    to_status: RunStatus
    reason: str | None = Field(
        description="Why: a failed or cancelled run's error, an attempt's error (e.g. "
        "`run cancelled` for an attempt closed by its run's end)."
    )
    actor: str = Field(
        description="Who or what made the change: `api_key:<id>`, `reaper`, `cli:<command>`, "
        "or `sql:<database user>` for a change made outside FlowForge."
    )
    recorded_at: datetime.datetime


class RunDetail(RunOut):
    step_logs: list[StepLogOut] = Field(description="By step position, then attempt.")
    waiting_reason: str | None = Field(
        default=None,
        description=(
            "Why a pending or awaiting_retry run is not running yet: `not_before`, "
            "`retry_backoff`, `workflow_concurrency`, `concurrency_limit:<name>`, or "
            "`queued` (due, a slot is free: waiting for a worker's claim)."
        ),
    )


class ClaimedRuns(BaseModel):
    runs: list[RunOut] = Field(description="The claimed runs, now running; empty: none due.")


# Each hot route's body, encoded once from the domain's records (flowforge/api/responses.py).
ENCODE_RUN = body_encoder(RunOut)
ENCODE_TRIGGERED = body_encoder(RunTriggered)
ENCODE_DETAIL = body_encoder(RunDetail)
ENCODE_PAGE = body_encoder(Page[RunOut])
ENCODE_HISTORY_PAGE = body_encoder(Page[RunHistoryOut])


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x20-\x7e]+$",
        description=(
            "Retry-safe triggering: the same key with the same inputs returns the same run "
            "(200, `replayed: true`); the same key with different inputs is a 409."
        ),
    ),
]


RUN_LOCATION = {
    "description": "The run's URL: `/api/v1/runs/{run_id}`.",
    "schema": {"type": "string", "examples": ["/api/v1/runs/e8d7c6b5-a493-4827-9160-5f4e3d2c1b0a"]},
}


@router.post(
    "/workflows/{workflow_id}/runs",
    status_code=201,
    response_model=RunTriggered,
    summary="Trigger a run",
    responses={
        201: {"description": "The new run", "headers": {"Location": RUN_LOCATION}},
        200: {
            "model": RunTriggered,
            "description": "Replay of an earlier Idempotency-Key",
            "headers": {
                "Location": RUN_LOCATION,
                "Idempotent-Replayed": {
                    "description": "`true`: this run was made by an earlier request.",
                    "schema": {"type": "string", "enum": ["true"]},
                },
            },
        },
        **error_responses(404, 409),
    },
)
async def trigger_run(
    workflow_id: UUID,
    response: Response,
    principal: CurrentPrincipal,
    body: Annotated[RunTrigger, Body(default_factory=RunTrigger)],
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Creates a pending run (201). An inactive workflow cannot be triggered (409)."""
    principal.require(Scope.WRITE)
    run, created = await runs.trigger_run(
        workflow_id,
        inputs=body.inputs,
        trigger_type=body.trigger_type,
        triggered_by=principal.user_id,
        idempotency_key=idempotency_key,
        owner_id=principal.owner_filter,
        version=body.version,
        priority=body.priority,
        not_before=body.not_before,
    )
    response.headers["Location"] = f"/api/v1/runs/{run['id']}"
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return json_response({**run, "replayed": not created}, ENCODE_TRIGGERED, response, 201)


@router.get(
    "/workflows/{workflow_id}/runs",
    response_model=Page[RunOut],
    summary="List a workflow's runs, newest first",
    responses=error_responses(404),
)
async def list_runs(
    workflow_id: UUID,
    response: Response,
    principal: ReadPrincipal,
    status: Annotated[RunStatus | None, Query(description="Only runs in this status.")] = None,
    limit: Annotated[Limit, Query()] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[Cursor, Query()] = None,
) -> Response:
    """Keyset pagination: pass `next_cursor` back as `cursor`. Runs created
    meanwhile never shift or repeat items."""
    principal.require(Scope.READ)
    items, next_cursor = await runs.list_runs(
        workflow_id, status=status, limit=limit, cursor=cursor, owner_id=principal.owner_filter
    )
    return json_response({"items": items, "next_cursor": next_cursor}, ENCODE_PAGE, response)


# `:uuid`: only a UUID is a run here, so /runs/claim is never the run "claim"
# (a GET or OPTIONS of it is a 405 naming POST; OpenAPI matches a concrete path
# before a templated one). Documented as /runs/{run_id} (a malformed id: 404).
@router.get(
    "/runs/{run_id:uuid}",
    response_model=RunDetail,
    summary="Get a run with its step attempts",
    responses=error_responses(404),
)
async def get_run(run_id: UUID, response: Response, principal: ReadPrincipal) -> Response:
    principal.require(Scope.READ)
    run = await runs.get_run(run_id, owner_id=principal.owner_filter)
    reason = None
    if run["status"] in (RunStatus.PENDING, RunStatus.AWAITING_RETRY):
        reason = await queue.waiting_reason(run_id)
    return json_response({**run, "waiting_reason": reason}, ENCODE_DETAIL, response)


@router.get(
    "/runs/{run_id}/history",
    response_model=Page[RunHistoryOut],
    summary="List a run's history, oldest first",
    responses=error_responses(404),
)
async def list_run_history(
    run_id: UUID,
    response: Response,
    principal: ReadPrincipal,
    limit: Annotated[Limit, Query()] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[Cursor, Query()] = None,
) -> Response:
    """Every state change of the run and of its step attempts (from, to, when, why, by
    whom), oldest first. Keyset pagination: pass `next_cursor` back as `cursor`.
    History is recorded from the migration that introduced it on; it is pruned with
    the run."""
    principal.require(Scope.READ)
    items, next_cursor = await history.list_run_history(
        run_id, limit=limit, cursor=cursor, owner_id=principal.owner_filter
    )
    return json_response(
        {"items": items, "next_cursor": next_cursor}, ENCODE_HISTORY_PAGE, response
    )


@router.post(
    "/runs/claim",
    summary="Claim due runs from the queue (workers)",
    description=(
        "Hands the calling worker up to `limit` due runs - pending runs past their "
        "`not_before` and awaiting_retry runs past their `next_attempt_at` - highest "
        "priority first, round robin across workflows, oldest first, never above a "
        "concurrency limit. Each is now running, claimed by `worker_id`, with a lease "
        "its heartbeats renew. Needs the `worker` scope. An empty list: nothing due "
        "(or everything due is held by other claimers or limits): poll again later."
    ),
)
async def claim_runs(body: RunClaim, principal: CurrentPrincipal) -> ClaimedRuns:
    principal.require(Scope.WORKER)
    claimed = await queue.claim_runs(
        body.worker_id,
        limit=body.limit,
        workflow_ids=body.workflow_ids,
        queue=body.queue,
        owner_id=principal.owner_filter,
    )
    return ClaimedRuns(runs=[RunOut(**run) for run in claimed])


# Workers (the worker scope) drive the runs they claim; cancel needs write.
DRIVE: Final = (Scope.WRITE, Scope.WORKER)


async def _transition(
    principal: Principal, response: Response, run_id: UUID, action: str, **kwargs: Any
) -> Response:
    if action == "cancel":
        principal.require(Scope.WRITE)
    else:
        principal.require_any(*DRIVE)
    run = await runs.transition_run(run_id, action, owner_id=principal.owner_filter, **kwargs)
    return json_response(run, ENCODE_RUN, response)


TRANSITION_RESPONSES = error_responses(404, 409)


@router.post(
    "/runs/{run_id}/start",
    response_model=RunOut,
    summary="Start a pending run",
    description=LIFECYCLE,
    responses=TRANSITION_RESPONSES,
)
async def start_run(run_id: UUID, response: Response, principal: CurrentPrincipal) -> Response:
    return await _transition(principal, response, run_id, "start")


@router.post(
    "/runs/{run_id}/complete",
    response_model=RunOut,
    summary="Complete a running run",
    description=LIFECYCLE,
    responses=TRANSITION_RESPONSES,
)
async def complete_run(
    run_id: UUID,
    response: Response,
    principal: CurrentPrincipal,
    body: Annotated[RunComplete, Body(default_factory=RunComplete)],
) -> Response:
    return await _transition(principal, response, run_id, "complete", outputs=body.outputs)


@router.post(
    "/runs/{run_id}/fail",
    response_model=RunOut,
    summary="Fail a running run (with its error)",
    description=LIFECYCLE,
    responses=TRANSITION_RESPONSES,
)
async def fail_run(
    run_id: UUID, response: Response, body: RunFail, principal: CurrentPrincipal
) -> Response:
    return await _transition(principal, response, run_id, "fail", error=body.error)


@router.post(
    "/runs/{run_id}/cancel",
    response_model=RunOut,
    summary="Cancel a pending or running run",
    description=LIFECYCLE + " Open step attempts of a run that ends are closed as cancelled.",
    responses=TRANSITION_RESPONSES,
)
async def cancel_run(
    run_id: UUID,
    response: Response,
    principal: CurrentPrincipal,
    body: Annotated[RunCancel, Body(default_factory=RunCancel)],
) -> Response:
    return await _transition(principal, response, run_id, "cancel", error=body.reason)


@router.post(
    "/runs/{run_id}/step-logs",
    status_code=201,
    summary="Log an attempt of a step of a running run",
    responses=TRANSITION_RESPONSES,
)
async def append_step_log(
    run_id: UUID, body: StepLogAppend, principal: CurrentPrincipal
) -> StepLogOut:
    """The server numbers attempts per step (1, 2, ...), safely under concurrency,
    and copies the step's name and position into the log. The run must be running
    (409 otherwise); each logged attempt also bumps the run's `updated_at`."""
    principal.require_any(*DRIVE)
    log = await runs.append_step_log(
        run_id,
        step_position=body.step_position,
        status=RunStatus(body.status),
        input=body.input,
        output=body.output,
        error=body.error,
        started_at=body.started_at,
        owner_id=principal.owner_filter,
    )
    return StepLogOut(**log)


@router.post(
    "/runs/{run_id}/heartbeat",
    status_code=204,
    summary="Renew a running run's lease (executors call this during long steps)",
    description=(
        "A running run whose last heartbeat (or logged attempt) is older than "
        "`RUN_LEASE_TIMEOUT` is failed by the reaper. 409 once the run is not running."
    ),
    responses=TRANSITION_RESPONSES,
)
async def heartbeat(run_id: UUID, principal: CurrentPrincipal) -> Response:
    principal.require_any(*DRIVE)
    await runs.heartbeat_run(run_id, owner_id=principal.owner_filter)
    return Response(status_code=204)


@router.post(
    "/runs/{run_id}/step-logs/{step_log_id}/finish",
    summary="Finish a running step attempt as completed or failed",
    responses=TRANSITION_RESPONSES,
)
async def finish_step_log(
    run_id: UUID,
    step_log_id: UUID,
    body: StepLogFinish,
    principal: CurrentPrincipal,
) -> StepLogOut:
    principal.require_any(*DRIVE)
    log = await runs.finish_step_log(
        run_id,
        step_log_id,
        status=RunStatus(body.status),
        output=body.output,
        error=body.error,
        owner_id=principal.owner_filter,
    )
    return StepLogOut(**log)
