"""Workflow operations. They run in the caller's transaction and never commit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from flowforge import events
from flowforge.db.engine import DB
from flowforge.db.tables import TriggerType
from flowforge.errors import NotFoundError
from flowforge.jsonutil import dumps, loads
from flowforge.outbox import record_event
from flowforge.pagination import DEFAULT_LIMIT, decode_cursor, page

WORKFLOW_COLUMNS = (
    "id, owner_id, name, description, trigger_type, trigger_config, is_active, "
    "created_at, updated_at"
)
STEP_COLUMNS = (
    "id, workflow_id, position, name, action_type, config, retry_policy, created_at, updated_at"
)


# Constant column lists interpolated at import time; every value is a bind parameter.
INSERT_WORKFLOW = f"""
    INSERT INTO workflows (owner_id, name, description, trigger_type, trigger_config)
    VALUES ($1, $2, $3, $4, $5::jsonb)
    RETURNING {WORKFLOW_COLUMNS}
"""  # noqa: S608
# All steps in one round trip: one array per column, unnested into rows.
INSERT_STEPS = f"""
    INSERT INTO workflow_steps (workflow_id, position, name, action_type, config, retry_policy)
    SELECT $1, s.position, s.name, s.action_type, s.config::jsonb, s.retry_policy::jsonb
    FROM unnest($2::int[], $3::text[], $4::text[], $5::text[], $6::text[])
        AS s(position, name, action_type, config, retry_policy)
    RETURNING {STEP_COLUMNS}
"""  # noqa: S608


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


def _record(row: Any) -> dict[str, Any]:
    """A row as a dict, with its JSONB columns decoded (asyncpg returns them as text)."""
    record = dict(row)
    for key in JSON_COLUMNS:
        if isinstance(record.get(key), str):
            record[key] = loads(record[key])
    return record


async def create_workflow(spec: WorkflowSpec) -> dict[str, Any]:
    """Insert a workflow with its steps and its `workflow.created` event, atomically."""
    connection = DB.require_transaction().connection
    workflow = _record(
        await connection.fetchrow(
            INSERT_WORKFLOW,
            spec.owner_id,
            spec.name,
            spec.description,
            spec.trigger_type.value,
            dumps(spec.trigger_config),
        )
    )
    steps: list[dict[str, Any]] = []
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
        steps = sorted((_record(row) for row in rows), key=lambda step: step["position"])
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
    workflow["steps"] = steps
    return workflow


async def delete_workflow(workflow_id: UUID, *, owner_id: UUID | None = None) -> None:
    """Delete a workflow and its steps; a workflow with runs is a ConflictError.

    ``owner_id`` limits the deletion to that user's workflow (None: any).
    """
    connection = DB.require_transaction().connection
    deleted = await connection.fetchrow(
        "DELETE FROM workflows WHERE id = $1 AND ($2::uuid IS NULL OR owner_id = $2) "
        "RETURNING owner_id, name",
        workflow_id,
        owner_id,
    )
    if deleted is None:
        raise NotFoundError("Workflow not found.", workflow_id=str(workflow_id))
    await record_event(
        events.WORKFLOW,
        workflow_id,
        "workflow.deleted",
        {"workflow_id": workflow_id, "owner_id": deleted["owner_id"], "name": deleted["name"]},
    )


# -- reading -----------------------------------------------------------------------------

STEP_FIELDS = tuple(name.strip() for name in STEP_COLUMNS.split(","))
# The workflow with its steps in order, in one query (steps as an array of rows).
GET_WORKFLOW = f"""
SELECT {WORKFLOW_COLUMNS},
    ARRAY(SELECT ROW({STEP_COLUMNS}) FROM workflow_steps s WHERE s.workflow_id = w.id
          ORDER BY s.position) AS steps
FROM workflows w
WHERE w.id = $1 AND ($2::uuid IS NULL OR w.owner_id = $2)
"""  # noqa: S608


async def get_workflow(workflow_id: UUID, *, owner_id: UUID | None = None) -> dict[str, Any]:
    """A workflow with its steps ordered by position; NotFoundError if not visible."""
    connection = DB.require_transaction().connection
    row = await connection.fetchrow(GET_WORKFLOW, workflow_id, owner_id)
    if row is None:
        raise NotFoundError("Workflow not found.", workflow_id=str(workflow_id))
    workflow = _record(row)
    workflow["steps"] = [
        _record(dict(zip(STEP_FIELDS, values, strict=True))) for values in row["steps"]
    ]
    return workflow


_LIST_CACHE: dict[tuple[bool, bool, bool], str] = {}


def _list_workflows_sql(by_owner: bool, by_active: bool, after: bool) -> str:
    """One SQL text per filter combination (see runs._list_runs_sql for why).

    Parameters in order: limit, [owner id], [is_active], [created_at, id].
    A user's workflows use workflows_owner_id_created_at_idx.
    """
    key = (by_owner, by_active, after)
    if key not in _LIST_CACHE:
        conditions = ["true"]
        number = 1
        if by_owner:
            number += 1
            conditions.append(f"w.owner_id = ${number}")
        if by_active:
            number += 1
            conditions.append(f"w.is_active = ${number}")
        if after:
            conditions.append(f"(w.created_at, w.id) < (${number + 1}, ${number + 2})")
        _LIST_CACHE[key] = f"""
SELECT {WORKFLOW_COLUMNS},
    (SELECT count(*) FROM workflow_steps s WHERE s.workflow_id = w.id) AS step_count
FROM workflows w
WHERE {" AND ".join(conditions)}
ORDER BY w.created_at DESC, w.id DESC
LIMIT $1
"""  # noqa: S608
    return _LIST_CACHE[key]


async def list_workflows(
    *,
    owner_id: UUID | None = None,
    is_active: bool | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of workflows (one owner's, or all), newest first, with their step counts."""
    position = decode_cursor(cursor)
    sql = _list_workflows_sql(owner_id is not None, is_active is not None, position is not None)
    args: list[Any] = [limit + 1]
    if owner_id is not None:
        args.append(owner_id)
    if is_active is not None:
        args.append(is_active)
    if position is not None:
        args.extend(position)
    connection = DB.require_transaction().connection
    rows = await connection.fetch(sql, *args)
    return page([_record(row) for row in rows], limit)


# -- changing ----------------------------------------------------------------------------

# Columns a workflow update may change (the keys of `changes`).
UPDATABLE_COLUMNS = ("name", "description", "trigger_type", "trigger_config", "is_active")


async def update_workflow(
    workflow_id: UUID, changes: Mapping[str, Any], *, owner_id: UUID | None = None
) -> dict[str, Any]:
    """Change some of name, description, trigger_type, trigger_config, is_active.

    Writes ``workflow.deactivated`` when the workflow stops being active,
    ``workflow.activated`` when it becomes active again, ``workflow.updated``
    for any other change; an update that changes nothing writes no event.
    """
    unknown = set(changes) - set(UPDATABLE_COLUMNS)
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    connection = DB.require_transaction().connection
    current = await connection.fetchrow(
        f"SELECT {WORKFLOW_COLUMNS} FROM workflows "  # noqa: S608 - constant columns
        "WHERE id = $1 AND ($2::uuid IS NULL OR owner_id = $2) FOR UPDATE",
        workflow_id,
        owner_id,
    )
    if current is None:
        raise NotFoundError("Workflow not found.", workflow_id=str(workflow_id))
    before = _record(current)
    changed = {
        column: value
        for column, value in changes.items()
        if (value.value if isinstance(value, TriggerType) else value) != before[column]
    }
    if not changed:
        return await get_workflow(workflow_id)
    assignments = []
    args: list[Any] = [workflow_id]
    for column in UPDATABLE_COLUMNS:  # fixed order and names: never client text
        if column in changed:
            value = changed[column]
            args.append(dumps(value) if column == "trigger_config" else value)
            cast = "::jsonb" if column == "trigger_config" else ""
            assignments.append(f"{column} = ${len(args)}{cast}")
    await connection.execute(
        f"UPDATE workflows SET {', '.join(assignments)} WHERE id = $1",  # noqa: S608
        *args,
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


# Lock the workflow (so concurrent replacements serialise) and bump updated_at.
TOUCH_WORKFLOW = """
UPDATE workflows SET updated_at = now()
WHERE id = $1 AND ($2::uuid IS NULL OR owner_id = $2)
RETURNING owner_id
"""


async def replace_steps(
    workflow_id: UUID, steps: Sequence[StepSpec], *, owner_id: UUID | None = None
) -> dict[str, Any]:
    """Replace a workflow's whole step list atomically; writes ``workflow.steps_replaced``.

    Past step logs keep their snapshot (step_position, step_name); their
    step_id becomes NULL (ON DELETE SET NULL).
    """
    connection = DB.require_transaction().connection
    workflow_owner = await connection.fetchval(TOUCH_WORKFLOW, workflow_id, owner_id)
    if workflow_owner is None:
        raise NotFoundError("Workflow not found.", workflow_id=str(workflow_id))
    await connection.execute("DELETE FROM workflow_steps WHERE workflow_id = $1", workflow_id)
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
