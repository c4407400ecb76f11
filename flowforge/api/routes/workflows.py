"""Workflows and their ordered steps. Developers see and change their own; admins, all."""

from __future__ import annotations

import datetime
import re
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from flowforge.api.deps import CurrentPrincipal, ReadPrincipal
from flowforge.api.jsonbody import ExactJSONRoute
from flowforge.api.schemas import (
    DEFAULT_PAGE_SIZE,
    MAX_VERSION,
    ActionType,
    Cursor,
    Description,
    JsonObject,
    Limit,
    LimitName,
    MaxConcurrency,
    Page,
    QueueName,
    RequestModel,
    RetryPolicy,
    StepName,
    StepPosition,
    WorkflowName,
    error_responses,
)
from flowforge.core.errors import ForbiddenError, InvalidInputError, PreconditionRequiredError
from flowforge.db.tables import Scope, TriggerType
from flowforge.domain import workflows
from flowforge.domain.principal import Principal
from flowforge.domain.records import VersionWithSteps, WorkflowWithSteps

router = APIRouter(
    tags=["workflows"], responses=error_responses(401, 403, 422), route_class=ExactJSONRoute
)

MAX_STEPS = 100

# The run queue's operational settings (issue 18): on create and PATCH.
QUEUE_DESCRIPTION = "The run queue workers claim its runs from (`POST /runs/claim` `queue`)."
MAX_CONCURRENCY_DESCRIPTION = (
    "At most this many of its runs `running` at once (>= 1); null: no per-workflow cap."
)
LIMIT_DESCRIPTION = (
    "The name of a shared concurrency limit (`GET /concurrency-limits`) its runs count "
    "against, with every other workflow that names it; null: none. 422 if no limit has it."
)


class StepIn(RequestModel):
    position: StepPosition | None = Field(
        default=None,
        description="Order of the step (unique, >= 0). Omit on every step to use list order.",
    )
    name: StepName
    action_type: ActionType = Field(description="What the step does, e.g. `http.request`.")
    config: JsonObject = Field(default_factory=dict)
    retry_policy: RetryPolicy = Field(
        default_factory=RetryPolicy,
        description="Retries of a failed attempt (issue 18); `{}`: none.",
    )


class StepList(RequestModel):
    # "a position on every step or on none", as JSON Schema: if some step has a
    # position, every step has one (uniqueness it cannot say). As if/then, not
    # anyOf beside `properties`: client generators turn that into a union of
    # partial models (openapi-python-client: WorkflowCreateType0 without `name`).
    model_config = ConfigDict(
        json_schema_extra={
            "if": {
                "required": ["steps"],
                "properties": {
                    "steps": {
                        "contains": {
                            "required": ["position"],
                            "properties": {"position": {"type": "integer"}},
                        }
                    }
                },
            },
            "then": {
                "properties": {
                    "steps": {
                        "items": {
                            "required": ["position"],
                            "properties": {"position": {"type": "integer"}},
                        }
                    }
                }
            },
        }
    )

    steps: list[StepIn] = Field(default_factory=list, max_length=MAX_STEPS)

    @model_validator(mode="after")
    def _positions(self) -> StepList:
        given = [step.position for step in self.steps if step.position is not None]
        if given and len(given) != len(self.steps):
            raise ValueError("give a position for every step or for none")
        if len(set(given)) != len(given):
            raise ValueError("step positions must be unique")
        return self

    def specs(self) -> list[workflows.StepSpec]:
        return [
            workflows.StepSpec(
                position=index if step.position is None else step.position,
                name=step.name,
                action_type=step.action_type,
                config=step.config,
                retry_policy=step.retry_policy.model_dump(exclude_unset=True),
            )
            for index, step in enumerate(self.steps)
        ]


class WorkflowCreate(StepList):
    name: WorkflowName
    description: Description = ""
    trigger_type: TriggerType = TriggerType.MANUAL
    trigger_config: JsonObject = Field(default_factory=dict)
    owner_id: UUID | None = Field(
        default=None, description="Create it for another user (admins only); default: yourself."
    )
    queue: QueueName = Field(default="default", description=QUEUE_DESCRIPTION)
    max_concurrency: MaxConcurrency | None = Field(
        default=None, description=MAX_CONCURRENCY_DESCRIPTION
    )
    concurrency_limit: LimitName | None = Field(default=None, description=LIMIT_DESCRIPTION)


# Fields of a PATCH where null is a value ("no cap", "no limit"), not "leave as is".
NULLABLE_UPDATES = frozenset({"max_concurrency", "concurrency_limit"})


class WorkflowUpdate(RequestModel):
    name: WorkflowName | None = None
    description: Description | None = None
    trigger_type: TriggerType | None = None
    trigger_config: JsonObject | None = None
    is_active: StrictBool | None = None
    queue: QueueName | None = Field(default=None, description=QUEUE_DESCRIPTION)
    max_concurrency: MaxConcurrency | None = Field(
        default=None,
        description=MAX_CONCURRENCY_DESCRIPTION + " Send null to remove the cap.",
    )
    concurrency_limit: LimitName | None = Field(
        default=None, description=LIMIT_DESCRIPTION + " Send null to detach it."
    )

    def changes(self) -> dict[str, Any]:
        """The fields to change: those sent; null leaves a field as is, except where
        null is a value (max_concurrency, concurrency_limit)."""
        return {
            name: value
            for name, value in self.model_dump(exclude_unset=True).items()
            if value is not None or name in NULLABLE_UPDATES
        }


class StepOut(BaseModel):
    id: UUID
    version: int = Field(description="The workflow version this step belongs to.")
    position: int
    name: str
    action_type: str
    config: dict[str, Any]
    retry_policy: dict[str, Any]


class WorkflowSummary(BaseModel):
    id: UUID
    owner_id: UUID
    name: str
    description: str
    trigger_type: TriggerType
    trigger_config: dict[str, Any]
    is_active: bool
    version: int = Field(
        description="The current definition (steps and trigger): "
        "GET /workflows/{id}/versions/{version}. Runs are pinned to the version they ran."
    )
    revision: int = Field(
        description='Incremented by every change; the ETag is `"<revision>"`. Send it back '
        "as If-Match to change the workflow."
    )
    queue: str = Field(description=QUEUE_DESCRIPTION)
    max_concurrency: int | None = Field(description=MAX_CONCURRENCY_DESCRIPTION)
    concurrency_limit: str | None = Field(description=LIMIT_DESCRIPTION)
    created_at: datetime.datetime
    updated_at: datetime.datetime
    step_count: int


class WorkflowOut(WorkflowSummary):
    steps: list[StepOut] = Field(description="The current version's steps, ordered by position.")


class VersionSummary(BaseModel):
    id: UUID
    workflow_id: UUID
    version: int
    trigger_type: TriggerType
    trigger_config: dict[str, Any]
    created_by_user_id: UUID | None
    created_at: datetime.datetime


class VersionOut(VersionSummary):
    steps: list[StepOut] = Field(description="This version's steps, ordered by position.")


# -- optimistic concurrency (docs/decisions/15-workflow-versions.md) ------------------------

ETAG_HEADER = {
    "ETag": {
        "description": 'The workflow\'s revision as a strong entity tag: `"<revision>"`. '
        "Send it as If-Match to change the workflow.",
        "schema": {"type": "string"},
    }
}
# If-Match (RFC 9110 13.1.1): * or a list of entity tags "..." or W/"..." (weak:
# never matches, If-Match compares strongly). The OpenAPI publishes this grammar
# as the header's pattern, so a value it allows is one the server parses (a
# malformed value is a 422, a well-formed one that names another revision a 412).
_ENTITY_TAG = r'(W/)?"([!#-~]*)"'  # etagc: %x21 / %x23-7E (no obs-text)
_LIST_TAG = r'(?:W/)?"[!#-~]*"'
IF_MATCH_PATTERN = rf"^(?:\*|{_LIST_TAG}(?:[ \t]*,[ \t]*{_LIST_TAG})*)$"
_IF_MATCH = re.compile(IF_MATCH_PATTERN)
_REVISION = re.compile(r"^[1-9][0-9]{0,8}$")  # fits a PostgreSQL integer
_IF_MATCH_SCHEMA = {
    "type": "string",
    "maxLength": 1000,
    "pattern": IF_MATCH_PATTERN,
    "examples": ['"3"', "*"],
}


def _if_match(*, required: bool, description: str) -> dict[str, Any]:
    """The If-Match parameter as the OpenAPI describes it (openapi_extra of a route).

    Described by hand: a string with IF_MATCH_PATTERN, required or not, never
    null (FastAPI would publish an optional header as string-or-null, and a
    required one would be a validation error when missing, not the 428).
    """
    parameter = {"name": "if-match", "in": "header", "required": required}
    described = {"description": description, "schema": _IF_MATCH_SCHEMA, "example": '"3"'}
    return {"parameters": [{**parameter, **described}]}


# Not in FastAPI's schema: the routes add IF_MATCH_REQUIRED or IF_MATCH_OPTIONAL.
IfMatch = Annotated[str | None, Header(max_length=1000, include_in_schema=False)]
IfMatchOptional = IfMatch
IF_MATCH_REQUIRED = _if_match(
    required=True,
    description='The ETag of your last GET of the workflow (`"3"`), or `*`. Required (428 '
    "without it); 412 when the workflow changed since (the body names its current revision).",
)
IF_MATCH_OPTIONAL = _if_match(
    required=False,
    description='Optional: the ETag of your last GET (`"3"`); 412 if it changed since.',
)


def expected_revisions(if_match: str | None, *, required: bool) -> list[int] | None:
    """The revisions `If-Match` accepts; None for `*` (or no header where it is optional).

    A weak or non-numeric tag matches no revision (the change is a 412), a
    malformed header (not IF_MATCH_PATTERN) is a 422, a missing one a 428
    where `required`.
    """
    if if_match is None:
        if required:
            raise PreconditionRequiredError(
                "This change needs If-Match: send the ETag of your last GET of this "
                'workflow (e.g. If-Match: "3"), or If-Match: * to overwrite whatever is there.'
            )
        return None
    value = if_match.strip()
    if _IF_MATCH.fullmatch(value) is None:
        raise InvalidInputError(
            'If-Match must be * or entity tags in double quotes, e.g. "3".',
            if_match=if_match[:100],
        )
    if value == "*":
        return None
    return [
        int(tag)
        for weak, tag in re.findall(_ENTITY_TAG, value)
        if not weak and _REVISION.fullmatch(tag)
    ]


def _etag(response: Response, workflow: WorkflowWithSteps) -> None:
    response.headers["ETag"] = f'"{workflow["revision"]}"'


def _out(workflow: WorkflowWithSteps) -> WorkflowOut:
    return WorkflowOut(**workflow, step_count=len(workflow["steps"]))


def _version_out(version: VersionWithSteps) -> VersionOut:
    return VersionOut(**version)


def _owner_for_create(principal: Principal, owner_id: UUID | None) -> UUID:
    if owner_id is None or owner_id == principal.user_id:
        return principal.user_id
    if not principal.is_admin:
        raise ForbiddenError("Only admins can create workflows for other users.")
    return owner_id


@router.post(
    "/workflows",
    status_code=201,
    summary="Create a workflow with its ordered steps",
    responses={
        201: {"description": "The new workflow", "headers": ETAG_HEADER},
        **error_responses(409),
    },
)
async def create_workflow(
    body: WorkflowCreate, principal: CurrentPrincipal, response: Response
) -> WorkflowOut:
    """The workflow and all its steps are written together, or nothing is."""
    principal.require(Scope.WRITE)
    workflow = await workflows.create_workflow(
        workflows.WorkflowSpec(
            owner_id=_owner_for_create(principal, body.owner_id),
            name=body.name,
            description=body.description,
            trigger_type=body.trigger_type,
            trigger_config=body.trigger_config,
            steps=body.specs(),
            queue=body.queue,
            max_concurrency=body.max_concurrency,
            concurrency_limit=body.concurrency_limit,
        )
    )
    _etag(response, workflow)
    return _out(workflow)


@router.get("/workflows", summary="List workflows (yours; admins: everyone's), newest first")
async def list_workflows(
    principal: ReadPrincipal,
    is_active: Annotated[bool | None, Query(description="Only active / inactive ones.")] = None,
    owner_id: Annotated[
        UUID | None, Query(description="Only this owner's (admins; others see only their own).")
    ] = None,
    limit: Annotated[Limit, Query()] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[Cursor, Query()] = None,
) -> Page[WorkflowSummary]:
    principal.require(Scope.READ)
    owner = principal.owner_filter
    if owner is None:
        owner = owner_id
    elif owner_id is not None and owner_id != owner:
        raise ForbiddenError("Only admins can list other users' workflows.")
    items, next_cursor = await workflows.list_workflows(
        owner_id=owner, is_active=is_active, limit=limit, cursor=cursor
    )
    return Page[WorkflowSummary](
        items=[WorkflowSummary(**item) for item in items], next_cursor=next_cursor
    )


@router.get(
    "/workflows/{workflow_id}",
    summary="Get a workflow with its current steps (ETag: its revision)",
    responses={
        200: {"description": "The workflow", "headers": ETAG_HEADER},
        **error_responses(404),
    },
)
async def get_workflow(
    workflow_id: UUID, principal: ReadPrincipal, response: Response
) -> WorkflowOut:
    principal.require(Scope.READ)
    workflow = await workflows.get_workflow(workflow_id, owner_id=principal.owner_filter)
    _etag(response, workflow)
    return _out(workflow)


@router.patch(
    "/workflows/{workflow_id}",
    summary="Change a workflow's name, description, trigger, active flag or queue settings "
    "(If-Match)",
    responses={
        200: {"description": "The changed workflow", "headers": ETAG_HEADER},
        **error_responses(404, 409, 412, 428),
    },
    openapi_extra=IF_MATCH_REQUIRED,
)
async def update_workflow(
    workflow_id: UUID,
    body: WorkflowUpdate,
    principal: CurrentPrincipal,
    response: Response,
    if_match: IfMatch = None,
) -> WorkflowOut:
    """Only the fields sent are changed (null means "leave as is"). Requires
    If-Match with the workflow's ETag: 412 if it changed since you read it, so
    two editors never overwrite each other. A trigger change creates a new
    version (the same steps); runs already triggered keep theirs. The queue
    settings (`queue`, `max_concurrency`, `concurrency_limit`: null removes the
    last two) are operational: they change the revision, not the version, and
    apply at once to the workflow's runs not yet running."""
    principal.require(Scope.WRITE)
    expected = expected_revisions(if_match, required=True)
    changes = body.changes()
    workflow = await workflows.update_workflow(
        workflow_id,
        changes,
        owner_id=principal.owner_filter,
        expected=expected,
        changed_by=principal.user_id,
    )
    _etag(response, workflow)
    return _out(workflow)


@router.put(
    "/workflows/{workflow_id}/steps",
    summary="Replace the whole step list: a new version (If-Match)",
    responses={
        200: {"description": "The workflow at its new version", "headers": ETAG_HEADER},
        **error_responses(404, 409, 412, 428),
    },
    openapi_extra=IF_MATCH_REQUIRED,
)
async def replace_steps(
    workflow_id: UUID,
    body: StepList,
    principal: CurrentPrincipal,
    response: Response,
    if_match: IfMatch = None,
) -> WorkflowOut:
    """Creates version N+1 with these steps, in one transaction. Earlier
    versions keep their steps: runs pinned to them keep running them, and their
    step logs keep pointing at them. Requires If-Match (see PATCH)."""
    principal.require(Scope.WRITE)
    expected = expected_revisions(if_match, required=True)
    workflow = await workflows.replace_steps(
        workflow_id,
        body.specs(),
        owner_id=principal.owner_filter,
        expected=expected,
        changed_by=principal.user_id,
    )
    _etag(response, workflow)
    return _out(workflow)


@router.get(
    "/workflows/{workflow_id}/versions",
    summary="List a workflow's versions, newest first",
    responses=error_responses(404),
)
async def list_versions(
    workflow_id: UUID,
    principal: ReadPrincipal,
    limit: Annotated[Limit, Query()] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[Cursor, Query()] = None,
) -> Page[VersionSummary]:
    """Keyset pagination: pass `next_cursor` back as `cursor`."""
    principal.require(Scope.READ)
    items, next_cursor = await workflows.list_versions(
        workflow_id, owner_id=principal.owner_filter, limit=limit, cursor=cursor
    )
    return Page[VersionSummary](
        items=[VersionSummary(**item) for item in items], next_cursor=next_cursor
    )


@router.get(
    "/workflows/{workflow_id}/versions/{version}",
    summary="Get one version of a workflow with its steps",
    responses=error_responses(404),
)
async def get_version(
    workflow_id: UUID,
    version: Annotated[int, Path(ge=1, le=MAX_VERSION)],
    principal: ReadPrincipal,
) -> VersionOut:
    principal.require(Scope.READ)
    return _version_out(
        await workflows.get_version(workflow_id, version, owner_id=principal.owner_filter)
    )


async def _set_active(
    principal: Principal,
    workflow_id: UUID,
    response: Response,
    if_match: str | None,
    *,
    active: bool,
) -> WorkflowOut:
    principal.require(Scope.WRITE)
    workflow = await workflows.update_workflow(
        workflow_id,
        {"is_active": active},
        owner_id=principal.owner_filter,
        expected=expected_revisions(if_match, required=False),
        changed_by=principal.user_id,
    )
    _etag(response, workflow)
    return _out(workflow)


@router.post(
    "/workflows/{workflow_id}/deactivate",
    summary="Deactivate a workflow: it keeps its runs but cannot be triggered",
    responses=error_responses(404, 412),
    openapi_extra=IF_MATCH_OPTIONAL,
)
async def deactivate_workflow(
    workflow_id: UUID,
    principal: CurrentPrincipal,
    response: Response,
    if_match: IfMatchOptional = None,
) -> WorkflowOut:
    """An action, not an edit: If-Match is optional (an operator switching a
    workflow off must not need to read it first)."""
    return await _set_active(principal, workflow_id, response, if_match, active=False)


@router.post(
    "/workflows/{workflow_id}/activate",
    summary="Activate a deactivated workflow",
    responses=error_responses(404, 412),
    openapi_extra=IF_MATCH_OPTIONAL,
)
async def activate_workflow(
    workflow_id: UUID,
    principal: CurrentPrincipal,
    response: Response,
    if_match: IfMatchOptional = None,
) -> WorkflowOut:
    """If-Match is optional, as for deactivate."""
    return await _set_active(principal, workflow_id, response, if_match, active=True)


@router.delete(
    "/workflows/{workflow_id}",
    status_code=204,
    summary="Delete a workflow that has never run",
    responses={
        **error_responses(404),
        409: {
            "model": error_responses(409)[409]["model"],
            "description": "The workflow has runs: deactivate it instead",
        },
    },
)
async def delete_workflow(workflow_id: UUID, principal: CurrentPrincipal) -> Response:
    """Deletes the workflow and its steps (ON DELETE CASCADE). A workflow that has
    runs cannot be deleted (`workflow_runs.workflow_id` is ON DELETE RESTRICT: run
    history is an audit record): that is a 409 — deactivate it instead."""
    principal.require(Scope.WRITE)
    await workflows.delete_workflow(workflow_id, owner_id=principal.owner_filter)
    return Response(status_code=204)
