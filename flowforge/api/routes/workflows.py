"""Workflows and their ordered steps. Developers see and change their own; admins, all."""

from __future__ import annotations

import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from flowforge.api.deps import CurrentPrincipal, ReadPrincipal
from flowforge.api.jsonbody import ExactJSONRoute
from flowforge.api.schemas import (
    DEFAULT_PAGE_SIZE,
    ActionType,
    Cursor,
    Description,
    JsonObject,
    Limit,
    Page,
    RequestModel,
    RetryPolicy,
    StepName,
    StepPosition,
    WorkflowName,
    error_responses,
)
from flowforge.core.errors import ForbiddenError
from flowforge.db.tables import Scope, TriggerType
from flowforge.domain import workflows
from flowforge.domain.principal import Principal
from flowforge.domain.records import WorkflowWithSteps

router = APIRouter(
    tags=["workflows"], responses=error_responses(401, 403, 422), route_class=ExactJSONRoute
)

MAX_STEPS = 100


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


class WorkflowUpdate(RequestModel):
    name: WorkflowName | None = None
    description: Description | None = None
    trigger_type: TriggerType | None = None
    trigger_config: JsonObject | None = None
    is_active: StrictBool | None = None


class StepOut(BaseModel):
    id: UUID
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
    created_at: datetime.datetime
    updated_at: datetime.datetime
    step_count: int


class WorkflowOut(WorkflowSummary):
    steps: list[StepOut] = Field(description="Ordered by position.")


def _out(workflow: WorkflowWithSteps) -> WorkflowOut:
    return WorkflowOut(**workflow, step_count=len(workflow["steps"]))


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
    responses=error_responses(409),
)
async def create_workflow(body: WorkflowCreate, principal: CurrentPrincipal) -> WorkflowOut:
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
        )
    )
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
    summary="Get a workflow with its steps",
    responses=error_responses(404),
)
async def get_workflow(workflow_id: UUID, principal: ReadPrincipal) -> WorkflowOut:
    principal.require(Scope.READ)
    return _out(await workflows.get_workflow(workflow_id, owner_id=principal.owner_filter))


@router.patch(
    "/workflows/{workflow_id}",
    summary="Change a workflow's name, description, trigger or active flag",
    responses=error_responses(404, 409),
)
async def update_workflow(
    workflow_id: UUID, body: WorkflowUpdate, principal: CurrentPrincipal
) -> WorkflowOut:
    """Only the fields sent are changed (null means "leave as is")."""
    principal.require(Scope.WRITE)
    changes = body.model_dump(exclude_none=True)
    workflow = await workflows.update_workflow(
        workflow_id, changes, owner_id=principal.owner_filter
    )
    return _out(workflow)


@router.put(
    "/workflows/{workflow_id}/steps",
    summary="Replace the whole step list atomically",
    responses=error_responses(404, 409),
)
async def replace_steps(
    workflow_id: UUID, body: StepList, principal: CurrentPrincipal
) -> WorkflowOut:
    """All old steps are removed and the new ones written in one transaction.
    Step logs of past runs are kept: they carry their own copy of the step's
    position and name (their `step_id` becomes null)."""
    principal.require(Scope.WRITE)
    workflow = await workflows.replace_steps(
        workflow_id, body.specs(), owner_id=principal.owner_filter
    )
    return _out(workflow)


async def _set_active(principal: Principal, workflow_id: UUID, *, active: bool) -> WorkflowOut:
    principal.require(Scope.WRITE)
    workflow = await workflows.update_workflow(
        workflow_id, {"is_active": active}, owner_id=principal.owner_filter
    )
    return _out(workflow)


@router.post(
    "/workflows/{workflow_id}/deactivate",
    summary="Deactivate a workflow: it keeps its runs but cannot be triggered",
    responses=error_responses(404),
)
async def deactivate_workflow(workflow_id: UUID, principal: CurrentPrincipal) -> WorkflowOut:
    return await _set_active(principal, workflow_id, active=False)


@router.post(
    "/workflows/{workflow_id}/activate",
    summary="Activate a deactivated workflow",
    responses=error_responses(404),
)
async def activate_workflow(workflow_id: UUID, principal: CurrentPrincipal) -> WorkflowOut:
    return await _set_active(principal, workflow_id, active=True)


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
