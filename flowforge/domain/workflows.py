"""Workflow operations. They run in the caller's transaction and never commit."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast
from uuid import UUID

from piccolo.columns import Column
from piccolo.custom_types import Combinable
from piccolo.query.methods.select import Select
from piccolo.querystring import QueryString

from flowforge.core import events
from flowforge.core.errors import InvalidFieldError, NotFoundError, PreconditionFailedError
from flowforge.core.json import dumps, loads
from flowforge.db.builder import (
    Param,
    compiled,
    limited,
    new_row,
    page_after,
)
from flowforge.db.engine import DB
from flowforge.db.sql.versions import NEW_VERSION, STEPS_OF_VERSION, VERSION_TABLE_COLUMNS
from flowforge.db.sql.workflows import (
    COPY_STEPS,
    INSERT_STEPS,
    LIMIT_NAME,
    STEP_COUNT,
    STEP_FIELDS,
    STEPS_OF_WORKFLOW,
)
from flowforge.db.tables import ConcurrencyLimit, TriggerType, Workflow, WorkflowVersion
from flowforge.domain.pagination import DEFAULT_LIMIT, decode_cursor, page
from flowforge.domain.records import (
    StepRecord,
    VersionRecord,
    VersionWithSteps,
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
    Workflow.version,
    Workflow.revision,
    Workflow.queue,
    Workflow.max_concurrency,
    Workflow.created_at,
    Workflow.updated_at,
)
# A version's columns: the statements' own list (flowforge.db.sql.versions).
VERSION_COLUMNS: tuple[Column, ...] = VERSION_TABLE_COLUMNS

# A precondition on a workflow's revision (If-Match): the revisions it accepts,
# or None for "any" (no If-Match header, or `*`, where the caller allows that).
Expected = Sequence[int] | None


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
    # The run queue's operational settings (issue 18).
    queue: str = "default"
    max_concurrency: int | None = None
    concurrency_limit: str | None = None  # a concurrency_limits name


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


def _stale(workflow_id: UUID, revision: int, version: int, expected: Expected) -> NoReturn:
    raise PreconditionFailedError(
        f"The workflow changed since you read it: its current revision is {revision} "
        f'(ETag "{revision}", definition version {version}). GET it again, and retry '
        "with If-Match set to its new ETag.",
        workflow_id=str(workflow_id),
        current_revision=revision,
        current_version=version,
        if_match=list(expected or ()),
    )


async def _version_created_event(
    workflow_id: UUID,
    owner_id: UUID,
    version: Mapping[str, Any],
    step_count: int,
) -> None:
    await record_event(
        events.WORKFLOW,
        workflow_id,
        "workflow.version_created",
        {
            "workflow_id": workflow_id,
            "owner_id": owner_id,
            "version": version["version"],
            "trigger_type": version["trigger_type"],
            "step_count": step_count,
            "created_by_user_id": version["created_by_user_id"],
        },
    )


async def _new_version(
    workflow_id: UUID,
    *,
    owner_id: UUID | None,
    expected: Expected,
    created_by: UUID | None,
    trigger_type: str | None = None,
    trigger_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Version N+1 of a workflow (its steps are the caller's to write), by compare-and-set.

    One statement (:data:`NEW_VERSION`): NotFoundError if the workflow is not
    visible, PreconditionFailedError if its revision is not in `expected`.
    """
    connection = DB.require_transaction().connection
    row = await connection.fetchrow(
        NEW_VERSION,
        workflow_id,
        owner_id,
        None if expected is None else list(expected),
        trigger_type,
        None if trigger_config is None else dumps(trigger_config),
        created_by,
    )
    if row is None:
        current = (
            await Workflow.select(Workflow.revision, Workflow.version)
            .where(visible_workflow(workflow_id, owner_id))
            .first()
            .run()
        )
        if current is None:
            raise NotFoundError("Workflow not found.", workflow_id=str(workflow_id))
        _stale(workflow_id, current["revision"], current["version"], expected)
    return _record(row)


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
        queue=spec.queue,
        max_concurrency=spec.max_concurrency,
        concurrency_limit_id=await concurrency_limit_id(spec.concurrency_limit),
    )
    workflow = _workflow(
        {
            **(await Workflow.insert(row).returning(*WORKFLOW_COLUMNS).run())[0],
            "concurrency_limit": spec.concurrency_limit,
        }
    )
    steps: list[StepRecord] = []
    if spec.steps:
        rows = await connection.fetch(
            INSERT_STEPS,
            workflow["id"],
            workflow["version"],
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
    # Version 1 itself is written by the database (the workflows_first_version
    # trigger, on the INSERT above): every workflow has its current version,
    # whoever inserts it. workflow.created announces it; workflow.version_created
    # announces each later one.
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


async def concurrency_limit_id(name: str | None) -> UUID | None:
    """The id of the concurrency limit named `name` (None: none); 422 if there is none."""
    if name is None:
        return None
    row = await compiled(
        ("workflows.concurrency_limit_id",),
        lambda: (
            ConcurrencyLimit.select(ConcurrencyLimit.id)
            .where(ConcurrencyLimit.name == Param("name"))
            .first()
        ),
    ).first(name=name)
    if row is None:
        raise InvalidFieldError(
            "concurrency_limit",
            f"There is no concurrency limit named {name!r}: create it first "
            "(POST /api/v1/concurrency-limits, admins) or send null for none.",
        )
    return cast(UUID, row["id"])


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
            Workflow.select(
                *WORKFLOW_COLUMNS,
                QueryString(LIMIT_NAME).as_alias("concurrency_limit"),
                QueryString(STEPS_OF_WORKFLOW).as_alias("steps"),
            )
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
        Workflow.select(
            *WORKFLOW_COLUMNS,
            QueryString(LIMIT_NAME).as_alias("concurrency_limit"),
            QueryString(STEP_COUNT).as_alias("step_count"),
        ).order_by(Workflow.created_at, Workflow.id, ascending=False),
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
    # Operational settings of the run queue (issue 18): they bump the revision
    # but are not part of the definition (no new version).
    "queue": Workflow.queue,
    "max_concurrency": Workflow.max_concurrency,
    "concurrency_limit_id": Workflow.concurrency_limit_id,
}
# The part of the definition a change of which creates a new version (the steps
# are the other part: replace_steps).
DEFINITION_COLUMNS = frozenset({"trigger_type", "trigger_config"})


async def update_workflow(
    workflow_id: UUID,
    changes: Mapping[str, Any],
    *,
    owner_id: UUID | None = None,
    expected: Expected = None,
    changed_by: UUID | None = None,
) -> WorkflowWithSteps:
    """Change some of name, description, trigger_type, trigger_config, is_active.

    ``expected``: the revisions the change may apply to (If-Match; None: any);
    another current revision is a :class:`PreconditionFailedError`, checked under
    the workflow's row lock, so of two editors holding the same revision one
    wins. A change of the trigger creates version N+1 (the same steps, as new
    rows) and writes ``workflow.version_created``. Every change increments the
    revision. Writes ``workflow.deactivated`` when the workflow stops being
    active, ``workflow.activated`` when it becomes active again,
    ``workflow.updated`` for any other change; an update that changes nothing
    writes no event and keeps the revision.
    """
    unknown = set(changes) - set(UPDATABLE_COLUMNS) - {"concurrency_limit"}
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    changes = dict(changes)
    limit_name: str | None = None
    if "concurrency_limit" in changes:
        limit_name = changes.pop("concurrency_limit")
        changes["concurrency_limit_id"] = await concurrency_limit_id(limit_name)
    current = await compiled(
        ("workflows.lock", owner_id is not None),
        lambda: (
            Workflow.select(*WORKFLOW_COLUMNS, Workflow.concurrency_limit_id)
            .where(visible_workflow(Param("workflow_id"), _owner_param(owner_id)))
            .first()
            .lock_rows("UPDATE")
        ),
    ).first(workflow_id=workflow_id, owner_id=owner_id)
    if current is None:
        raise NotFoundError("Workflow not found.", workflow_id=str(workflow_id))
    before = _record(current)  # compared column by column (keys from `changes`)
    if expected is not None and before["revision"] not in expected:
        _stale(workflow_id, before["revision"], before["version"], expected)
    changed = {
        column: value.value if isinstance(value, TriggerType) else value
        for column, value in changes.items()
        if (value.value if isinstance(value, TriggerType) else value) != before[column]
    }
    if not changed:
        return await get_workflow(workflow_id)
    plain = {name: value for name, value in changed.items() if name not in DEFINITION_COLUMNS}
    if DEFINITION_COLUMNS & set(changed):
        version = await _new_version(
            workflow_id,
            owner_id=None,
            expected=[before["revision"]],
            created_by=changed_by,
            trigger_type=changed.get("trigger_type"),
            trigger_config=cast("Mapping[str, Any] | None", changed.get("trigger_config")),
        )
        connection = DB.require_transaction().connection
        copied = await connection.execute(COPY_STEPS, workflow_id, version["version"])
        await _version_created_event(
            workflow_id, before["owner_id"], version, int(copied.rsplit(" ", 1)[-1])
        )
        revision = version["revision"]  # bumped once by the new version
    else:
        revision = before["revision"]
    if plain:
        values: dict[Column | str, Any] = {
            UPDATABLE_COLUMNS[name]: value for name, value in plain.items()
        }
        if revision == before["revision"]:
            values[Workflow.revision] = Workflow.revision + 1
        # The compare-and-set in the database too (the row is ours: we hold its lock).
        await (
            Workflow.update(values)
            .where((Workflow.id == workflow_id) & (Workflow.revision == revision))
            .run()
        )
    if "is_active" in changed:
        event_type = "workflow.activated" if changed["is_active"] else "workflow.deactivated"
    else:
        event_type = "workflow.updated"
    if "concurrency_limit_id" in changed:
        # Announced by name, as the API shows it.
        del changed["concurrency_limit_id"]
        changed["concurrency_limit"] = limit_name
    await record_event(
        events.WORKFLOW,
        workflow_id,
        event_type,
        {"workflow_id": workflow_id, "owner_id": before["owner_id"], "changes": changed},
    )
    return await get_workflow(workflow_id)


async def replace_steps(
    workflow_id: UUID,
    steps: Sequence[StepSpec],
    *,
    owner_id: UUID | None = None,
    expected: Expected = None,
    changed_by: UUID | None = None,
) -> WorkflowWithSteps:
    """Replace a workflow's whole step list: version N+1 with these steps, atomically.

    ``expected`` as for :func:`update_workflow`: the check is the compare-and-set
    of the version's own statement. The steps of earlier versions stay (runs
    pinned to them keep running them; their step logs keep their ``step_id``).
    Writes ``workflow.steps_replaced`` and ``workflow.version_created``.
    """
    connection = DB.require_transaction().connection
    version = await _new_version(
        workflow_id, owner_id=owner_id, expected=expected, created_by=changed_by
    )
    if steps:
        await connection.execute(
            INSERT_STEPS,
            workflow_id,
            version["version"],
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
            "owner_id": version["owner_id"],
            "step_count": len(ordered),
            "steps": [
                {"position": step.position, "name": step.name, "action_type": step.action_type}
                for step in ordered
            ],
        },
    )
    await _version_created_event(workflow_id, version["owner_id"], version, len(ordered))
    return await get_workflow(workflow_id)


# -- versions ----------------------------------------------------------------------------


def _version(row: Mapping[str, Any]) -> VersionRecord:
    return cast(VersionRecord, _record(row))


async def _require_visible(workflow_id: UUID, owner_id: UUID | None) -> None:
    found = await compiled(
        ("workflows.visible", owner_id is not None),
        lambda: (
            Workflow.select(Workflow.id)
            .where(visible_workflow(Param("workflow_id"), _owner_param(owner_id)))
            .first()
        ),
    ).first(workflow_id=workflow_id, owner_id=owner_id)
    if found is None:
        raise NotFoundError("Workflow not found.", workflow_id=str(workflow_id))


async def version_exists(workflow_id: UUID, version: int) -> bool:
    found = await compiled(
        ("workflows.version_exists",),
        lambda: (
            WorkflowVersion.select(WorkflowVersion.id)
            .where(
                (WorkflowVersion.workflow_id == Param("workflow_id"))
                & (WorkflowVersion.version == Param("version"))
            )
            .first()
        ),
    ).first(workflow_id=workflow_id, version=version)
    return found is not None


async def list_versions(
    workflow_id: UUID,
    *,
    owner_id: UUID | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> tuple[list[VersionRecord], str | None]:
    """A page of a workflow's versions, newest first (without their steps)."""
    position = decode_cursor(cursor)
    await _require_visible(workflow_id, owner_id)
    query = compiled(
        ("workflows.versions", position is not None),
        lambda: _versions_query(position is not None),
    )
    created_at, after_id = position if position is not None else (None, None)
    rows = await query.fetch(
        workflow_id=workflow_id, limit=limit + 1, created_at=created_at, id=after_id
    )
    return page([_version(row) for row in rows], limit)


def _versions_query(after: bool) -> Select[WorkflowVersion]:
    query = limited(
        WorkflowVersion.select(*VERSION_COLUMNS)
        .where(WorkflowVersion.workflow_id == Param("workflow_id"))
        .order_by(WorkflowVersion.created_at, WorkflowVersion.id, ascending=False),
        Param("limit"),
    )
    if after:
        query = query.where(page_after(WorkflowVersion, (Param("created_at"), Param("id"))))
    return query


async def get_version(
    workflow_id: UUID, version: int, *, owner_id: UUID | None = None
) -> VersionWithSteps:
    """One version of a workflow with its steps; NotFoundError naming the latest if none."""
    await _require_visible(workflow_id, owner_id)
    row = await compiled(
        ("workflows.get_version",),
        lambda: (
            WorkflowVersion.select(
                *VERSION_COLUMNS, QueryString(STEPS_OF_VERSION).as_alias("steps")
            )
            .where(
                (WorkflowVersion.workflow_id == Param("workflow_id"))
                & (WorkflowVersion.version == Param("version"))
            )
            .first()
        ),
    ).first(workflow_id=workflow_id, version=version)
    if row is None:
        latest = await Workflow.select(Workflow.version).where(Workflow.id == workflow_id).first()
        raise NotFoundError(
            f"The workflow has no version {version}; its latest is "
            f"{latest['version'] if latest else 'unknown'}.",
            workflow_id=str(workflow_id),
            version=version,
        )
    steps = [_step(dict(zip(STEP_FIELDS, values, strict=True))) for values in row.pop("steps")]
    return {**_version(row), "steps": steps}
