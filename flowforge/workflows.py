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


async def delete_workflow(workflow_id: UUID) -> None:
    """Delete a workflow and its steps; a workflow with runs is a ConflictError."""
    connection = DB.require_transaction().connection
    deleted = await connection.fetchval(
        "DELETE FROM workflows WHERE id = $1 RETURNING owner_id", workflow_id
    )
    if deleted is None:
        raise NotFoundError("Workflow not found.", workflow_id=str(workflow_id))
    await record_event(
        events.WORKFLOW, workflow_id, "workflow.deleted", {"workflow_id": workflow_id}
    )
