"""Workflow operations. They run in the caller's transaction and never commit."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from uuid import UUID

from piccolo.columns import Column
from piccolo.custom_types import Combinable
from piccolo.query.methods.select import Select
from piccolo.querystring import QueryString

from flowforge.core import events
from flowforge.core.errors import NotFoundError
from flowforge.core.json import dumps, loads
from flowforge.db.builder import (
    NOW,
    Param,
    compiled,
    limited,
    new_row,
    page_after,
)
from flowforge.db.engine import DB
from flowforge.db.sql.workflows import INSERT_STEPS, STEP_COUNT, STEP_FIELDS, STEPS_OF_WORKFLOW
from flowforge.db.tables import TriggerType, Workflow, WorkflowStep
from flowforge.domain.pagination import DEFAULT_LIMIT, decode_cursor, page
from flowforge.domain.records import (
    StepRecord,
    WorkflowRecord,
    WorkflowSummary,
    WorkflowWithSteps,
)
from flowforge.outbox.writer import record_event

WORKFLOW_COLUMNS: tuple[Column, ...] = (
    Workflow.id,
    Workflow.owner_id,
    Workflow.name,
    Workflow.description,
    Workflow.trigger_type,
    Workflow.trigger_config,
    Workflow.is_active,
    Workflow.created_at,
    Workflow.updated_at,
)


@dataclass(frozen=True)
class StepSpec:
    position: int
    name: str
    action_type: str
    config: Mapping[str, Any] = field(default_factory=dict)
    retry_policy: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkflowSpec:
    owner_id: UUID
    name: str
    description: str = ""
    trigger_type: TriggerType = TriggerType.MANUAL
    trigger_config: Mapping[str, Any] = field(default_factory=dict)
    steps: Sequence[StepSpec] = ()


JSON_COLUMNS = ("trigger_config", "config", "retry_policy")


def _record(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as a dict, with its JSONB columns decoded (asyncpg returns them as text)."""
    record = dict(row)
    for key in JSON_COLUMNS:
        if isinstance(record.get(key), str):
            record[key] = loads(record[key])
    return record


def _workflow(row: Mapping[str, Any]) -> WorkflowRecord:
    return cast(WorkflowRecord, _record(row))


def _step(row: Mapping[str, Any]) -> StepRecord:
    return cast(StepRecord, _record(row))


def _with_steps(workflow: WorkflowRecord, steps: list[StepRecord]) -> WorkflowWithSteps:
    return {**workflow, "steps": steps}


async def create_workflow(spec: WorkflowSpec) -> WorkflowWithSteps:
    """Insert a workflow with its steps and its `workflow.created` event, atomically."""
    connection = DB.require_transaction().connection
    row = new_row(
        Workflow,
        owner_id=spec.owner_id,
        name=spec.name,
        description=spec.description,
        trigger_type=spec.trigger_type.value,
        trigger_config=dumps(spec.trigger_config),
    )
    workflow = _workflow((await Workflow.insert(row).returning(*WORKFLOW_COLUMNS).run())[0])
    steps: list[StepRecord] = []
    if spec.steps:
        rows = await connection.fetch(
            INSERT_STEPS,
            workflow["id"],
            [step.position for step in spec.steps],
            [step.name for step in spec.steps],
            [step.action_type for step in spec.steps],
            [dumps(step.config) for step in spec.steps],
            [dumps(step.retry_policy) for step in spec.steps],
        )
        steps = sorted((_step(row) for row in rows), key=lambda step: step["position"])
    await record_event(
        events.WORKFLOW,
        workflow["id"],
        "workflow.created",
        {
            "workflow_id": workflow["id"],
            "owner_id": workflow["owner_id"],
            "name": workflow["name"],
            "trigger_type": workflow["trigger_type"],
            "step_count": len(steps),
        },
    )
    return _with_steps(workflow, steps)


async def delete_workflow(workflow_id: UUID, *, owner_id: UUID | None = None) -> None:
    """Delete a workflow and its steps; a workflow with runs is a ConflictError.

    ``owner_id`` limits the deletion to that user's workflow (None: any).
    """
    DB.require_transaction()
    rows = await (
        Workflow.delete()
        .where(visible_workflow(workflow_id, owner_id))
        .returning(Workflow.owner_id, Workflow.name)
        .run()
    )
    if not rows:
        raise NotFoundError("Workflow not found.", workflow_id=str(workflow_id))
    deleted = rows[0]
    await record_event(
        events.WORKFLOW,
        workflow_id,
        "workflow.deleted",
        {"workflow_id": workflow_id, "owner_id": deleted["owner_id"], "name": deleted["name"]},
    )


# -- reading -----------------------------------------------------------------------------


def _owner_param(owner_id: UUID | None) -> Param | None:
    return None if owner_id is None else Param("owner_id")


def visible_workflow(workflow_id: UUID | Param, owner_id: UUID | Param | None) -> Combinable:
    """This workflow, if `owner_id` (when given) owns it."""
    condition: Combinable = Workflow.id == workflow_id
    if owner_id is not None:
        condition &= Workflow.owner_id == owner_id
    return condition


async def get_workflow(workflow_id: UUID, *, owner_id: UUID | None = None) -> WorkflowWithSteps:
    """A workflow with its steps ordered by position; NotFoundError if not visible."""
    row = await compiled(
        ("workflows.get_workflow", owner_id is not None),
        lambda: (
            Workflow.select(*WORKFLOW_COLUMNS, QueryString(STEPS_OF_WORKFLOW).as_alias("steps"))
            .where(visible_workflow(Param("workflow_id"), _owner_param(owner_id)))
            .first()
        ),
    ).first(workflow_id=workflow_id, owner_id=owner_id)
    if row is None:
        raise NotFoundError("Workflow not found.", workflow_id=str(workflow_id))
    steps = [_step(dict(zip(STEP_FIELDS, values, strict=True))) for values in row.pop("steps")]
    return _with_steps(_workflow(row), steps)


async def list_workflows(
    *,
    owner_id: UUID | None = None,
    is_active: bool | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> tuple[list[WorkflowSummary], str | None]:
    """A page of workflows (one owner's, or all), newest first, with their step counts."""
    position = decode_cursor(cursor)
    query = compiled(
        ("workflows.list", owner_id is not None, is_active is not None, position is not None),
        lambda: list_workflows_query(
            owner_id=_owner_param(owner_id),
            is_active=None if is_active is None else Param("is_active"),
            limit=Param("limit"),
            position=None if position is None else (Param("created_at"), Param("id")),
        ),
    )
    created_at, after_id = position if position is not None else (None, None)
    rows = await query.fetch(
        owner_id=owner_id,
        is_active=is_active,
        limit=limit + 1,
        created_at=created_at,
        id=after_id,
    )
    return page([cast(WorkflowSummary, _record(row)) for row in rows], limit)


def list_workflows_query(
    *,
    owner_id: UUID | Param | None,
    is_active: bool | Param | None,
    limit: int | Param,
    position: tuple[datetime.datetime | Param, UUID | Param] | None,
) -> Select[Workflow]:
    """The SELECT behind :func:`list_workflows` (tests/test_explain.py plans it).

    A user's workflows use workflows_owner_id_created_at_idx.
    """
    query = limited(
        Workflow.select(*WORKFLOW_COLUMNS, QueryString(STEP_COUNT).as_alias("step_count")).order_by(
            Workflow.created_at, Workflow.id, ascending=False
        ),
        limit,
    )
    if owner_id is not None:
        query = query.where(Workflow.owner_id == owner_id)
    if is_active is not None:
        query = query.where(Workflow.is_active == is_active)
    if position is not None:
        query = query.where(page_after(Workflow, position))
    return query


# -- changing ----------------------------------------------------------------------------

# Columns a workflow update may change (the keys of `changes`).
UPDATABLE_COLUMNS: dict[str, Column] = {
    "name": Workflow.name,
    "description": Workflow.description,
    "trigger_type": Workflow.trigger_type,
    "trigger_config": Workflow.trigger_config,
    "is_active": Workflow.is_active,
}


async def update_workflow(
    workflow_id: UUID, changes: Mapping[str, Any], *, owner_id: UUID | None = None
) -> WorkflowWithSteps:
    """Change some of name, description, trigger_type, trigger_config, is_active.

    Writes ``workflow.deactivated`` when the workflow stops being active,
    ``workflow.activated`` when it becomes active again, ``workflow.updated``
    for any other change; an update that changes nothing writes no event.
    """
    unknown = set(changes) - set(UPDATABLE_COLUMNS)
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    current = await compiled(
        ("workflows.lock", owner_id is not None),
        lambda: (
            Workflow.select(*WORKFLOW_COLUMNS)
            .where(visible_workflow(Param("workflow_id"), _owner_param(owner_id)))
            .first()
            .lock_rows("UPDATE")
        ),
    ).first(workflow_id=workflow_id, owner_id=owner_id)
    if current is None:
        raise NotFoundError("Workflow not found.", workflow_id=str(workflow_id))
    before = _record(current)  # compared column by column (keys from `changes`)
    changed = {
        column: value
        for column, value in changes.items()
        if (value.value if isinstance(value, TriggerType) else value) != before[column]
    }
    if not changed:
        return await get_workflow(workflow_id)
    await (
        Workflow.update(
            {
                UPDATABLE_COLUMNS[name]: dumps(value) if name == "trigger_config" else value
                for name, value in changed.items()
            }
        )
        .where(Workflow.id == workflow_id)
        .run()
    )
    if "is_active" in changed:
        event_type = "workflow.activated" if changed["is_active"] else "workflow.deactivated"
    else:
        event_type = "workflow.updated"
    await record_event(
        events.WORKFLOW,
        workflow_id,
        event_type,
        {
            "workflow_id": workflow_id,
            "owner_id": before["owner_id"],
            "changes": {
                column: (value.value if isinstance(value, TriggerType) else value)
                for column, value in changed.items()
            },
        },
    )
    return await get_workflow(workflow_id)


async def replace_steps(
    workflow_id: UUID, steps: Sequence[StepSpec], *, owner_id: UUID | None = None
) -> WorkflowWithSteps:
    """Replace a workflow's whole step list atomically; writes ``workflow.steps_replaced``.

    Past step logs keep their snapshot (step_position, step_name); their
    step_id becomes NULL (ON DELETE SET NULL).
    """
    connection = DB.require_transaction().connection
    # Lock the workflow (so concurrent replacements serialise) and bump updated_at.
    touched = await (
        Workflow.update({Workflow.updated_at: NOW})
        .where(visible_workflow(workflow_id, owner_id))
        .returning(Workflow.owner_id)
        .run()
    )
    if not touched:
        raise NotFoundError("Workflow not found.", workflow_id=str(workflow_id))
    workflow_owner = touched[0]["owner_id"]
    await WorkflowStep.delete().where(WorkflowStep.workflow_id == workflow_id).run()
    if steps:
        await connection.execute(
            INSERT_STEPS,
            workflow_id,
            [step.position for step in steps],
            [step.name for step in steps],
            [step.action_type for step in steps],
            [dumps(step.config) for step in steps],
            [dumps(step.retry_policy) for step in steps],
        )
    ordered = sorted(steps, key=lambda step: step.position)
    await record_event(
        events.WORKFLOW,
        workflow_id,
        "workflow.steps_replaced",
        {
            "workflow_id": workflow_id,
            "owner_id": workflow_owner,
            "step_count": len(ordered),
            "steps": [
                {"position": step.position, "name": step.name, "action_type": step.action_type}
                for step in ordered
            ],
        },
    )
    return await get_workflow(workflow_id)
