"""Cold paths moved to Piccolo's query builder, against their previous raw SQL.

Issue 10 moved users, key management, workflow CRUD, readiness, the
error-path lookups, the outbox's dead-letter list, the dry-run count of
expired events and the relay's idle probe from raw SQL to the query builder; the target is at most
1.5x their previous cost. Here the "floor" side of each comparison is the
previous implementation (the raw SQL as it was, copied below), run through
the same engine and transaction as the new one, so the ratio is the builder's
cost alone: query building, its SQL, and its result handling.
"""

from __future__ import annotations

import datetime
import itertools
import json
import uuid
from typing import Any

from benchmarks.harness import Operation

WORKFLOW_COLUMNS = (
    "id, owner_id, name, description, trigger_type, trigger_config, is_active, version, "
    "revision, created_at, updated_at"
)
STEP_COLUMNS = (
    "id, workflow_id, version, position, name, action_type, config, retry_policy, created_at, "
    "updated_at"
)
STEP_FIELDS = tuple(name.strip() for name in STEP_COLUMNS.split(","))
USER_COLUMNS = "id, email, display_name, role, is_active, created_at, updated_at"
KEY_COLUMNS = (
    "id, user_id, name, prefix, scopes, expires_at, revoked_at, last_used_at, created_at, "
    "updated_at"
)

PREVIOUS_GET_WORKFLOW = f"""
SELECT {WORKFLOW_COLUMNS},
    ARRAY(SELECT ROW({STEP_COLUMNS}) FROM workflow_steps s WHERE s.workflow_id = w.id
          AND s.version = w.version ORDER BY s.position) AS steps
FROM workflows w
WHERE w.id = $1 AND ($2::uuid IS NULL OR w.owner_id = $2)
"""
PREVIOUS_LIST_WORKFLOWS_OF_OWNER = f"""
SELECT {WORKFLOW_COLUMNS},
    (SELECT count(*) FROM workflow_steps s WHERE s.workflow_id = w.id AND s.version = w.version)
        AS step_count
FROM workflows w
WHERE true AND w.owner_id = $2
ORDER BY w.created_at DESC, w.id DESC
LIMIT $1
"""
PREVIOUS_LIST_USERS = f"""
SELECT {USER_COLUMNS} FROM users ORDER BY created_at DESC, id DESC LIMIT $1
"""
PREVIOUS_GET_USER = f"SELECT {USER_COLUMNS} FROM users WHERE id = $1"
PREVIOUS_LIST_KEYS = f"""
SELECT {KEY_COLUMNS} FROM api_keys
WHERE ($2::uuid IS NULL OR user_id = $2)
  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
ORDER BY created_at DESC, id DESC
LIMIT $1
"""
PREVIOUS_SELECT_FOR_UPDATE = (
    f"SELECT {WORKFLOW_COLUMNS} FROM workflows "
    "WHERE id = $1 AND ($2::uuid IS NULL OR owner_id = $2) FOR UPDATE"
)
PREVIOUS_INSERT_USER = f"""
INSERT INTO users (email, display_name, role) VALUES ($1, $2, $3) RETURNING {USER_COLUMNS}
"""
PREVIOUS_RUN_STATE = """
SELECT r.status FROM workflow_runs r JOIN workflows w ON w.id = r.workflow_id
WHERE r.id = $1 AND ($2::uuid IS NULL OR w.owner_id = $2)
"""
PREVIOUS_MIGRATIONS = "SELECT app_name, name FROM migration"
PREVIOUS_DEAD_LETTERS = """
SELECT id, aggregate_type, aggregate_id, event_type, attempts, dead_lettered_at,
    left(last_error, 300) AS last_error
FROM outbox
WHERE dead_lettered_at IS NOT NULL
ORDER BY dead_lettered_at
LIMIT $1
"""
PREVIOUS_HAS_WORK = """
SELECT EXISTS (
    SELECT 1 FROM outbox
    WHERE published_at IS NULL AND dead_lettered_at IS NULL AND next_attempt_at <= now()
)
"""
PREVIOUS_COUNT_OUTBOX = """
SELECT count(*) FROM outbox WHERE published_at < now() - make_interval(secs => $1::float8)
"""


def _record(row: Any) -> dict[str, Any]:
    record = dict(row)
    for key in ("trigger_config", "config", "retry_policy"):
        if isinstance(record.get(key), str):
            record[key] = json.loads(record[key])
    return record


async def _previous_get_workflow(connection: Any, workflow_id: uuid.UUID) -> dict[str, Any]:
    row = await connection.fetchrow(PREVIOUS_GET_WORKFLOW, workflow_id, None)
    workflow = _record(row)
    workflow["steps"] = [
        _record(dict(zip(STEP_FIELDS, values, strict=True))) for values in row["steps"]
    ]
    return workflow


def get_workflow(ctx: Any) -> tuple[Operation, Operation]:
    from flowforge.db.engine import DB
    from flowforge.domain import workflows

    async def builder(n: int) -> Any:
        async with DB.transaction():
            return await workflows.get_workflow(ctx.workflow(n))

    async def previous(n: int) -> Any:
        async with DB.transaction() as transaction:
            return await _previous_get_workflow(transaction.connection, ctx.workflow(n))

    return builder, previous


def list_workflows_page(ctx: Any) -> tuple[Operation, Operation]:
    from flowforge.db.engine import DB
    from flowforge.domain import workflows

    owners = ctx.loaded.user_ids

    async def builder(n: int) -> Any:
        async with DB.transaction():
            return await workflows.list_workflows(owner_id=owners[n % len(owners)], limit=50)

    async def previous(n: int) -> Any:
        async with DB.transaction() as transaction:
            rows = await transaction.connection.fetch(
                PREVIOUS_LIST_WORKFLOWS_OF_OWNER, 51, owners[n % len(owners)]
            )
            return [_record(row) for row in rows][:50]

    return builder, previous


def list_users_page(ctx: Any) -> tuple[Operation, Operation]:
    from flowforge.db.engine import DB
    from flowforge.domain import users

    async def builder(n: int) -> Any:
        async with DB.transaction():
            return await users.list_users(limit=50)

    async def previous(n: int) -> Any:
        async with DB.transaction() as transaction:
            rows = await transaction.connection.fetch(PREVIOUS_LIST_USERS, 51)
            return [dict(row) for row in rows][:50]

    return builder, previous


def get_user(ctx: Any) -> tuple[Operation, Operation]:
    from flowforge.db.engine import DB
    from flowforge.domain import users

    ids = ctx.loaded.user_ids

    async def builder(n: int) -> Any:
        async with DB.transaction():
            return await users.get_user(ids[n % len(ids)])

    async def previous(n: int) -> Any:
        async with DB.transaction() as transaction:
            return dict(await transaction.connection.fetchrow(PREVIOUS_GET_USER, ids[n % len(ids)]))

    return builder, previous


def list_api_keys_page(ctx: Any) -> tuple[Operation, Operation]:
    from flowforge.db.engine import DB
    from flowforge.domain import api_keys

    ids = ctx.loaded.user_ids

    async def builder(n: int) -> Any:
        async with DB.transaction():
            return await api_keys.list_api_keys(user_id=ids[n % len(ids)], limit=50)

    async def previous(n: int) -> Any:
        async with DB.transaction() as transaction:
            rows = await transaction.connection.fetch(
                PREVIOUS_LIST_KEYS, 51, ids[n % len(ids)], None, None
            )
            return [{**dict(row), "scopes": list(row["scopes"])} for row in rows][:50]

    return builder, previous


def rename_workflow(ctx: Any) -> tuple[Operation, Operation]:
    """update_workflow with a new name: lock, update, event, read back."""
    from flowforge.core import events
    from flowforge.db.engine import DB
    from flowforge.domain import workflows
    from flowforge.outbox.writer import record_event

    async def builder(n: int) -> Any:
        async with DB.transaction():
            return await workflows.update_workflow(ctx.workflow(n), {"name": f"renamed {n}"})

    async def previous(n: int) -> Any:
        workflow_id = ctx.workflow(n)
        async with DB.transaction() as transaction:
            connection = transaction.connection
            before = _record(
                await connection.fetchrow(PREVIOUS_SELECT_FOR_UPDATE, workflow_id, None)
            )
            await connection.execute(
                "UPDATE workflows SET name = $2 WHERE id = $1", workflow_id, f"renamed {n}b"
            )
            await record_event(
                events.WORKFLOW,
                workflow_id,
                "workflow.updated",
                {
                    "workflow_id": workflow_id,
                    "owner_id": before["owner_id"],
                    "changes": {"name": f"renamed {n}b"},
                },
            )
            return await _previous_get_workflow(connection, workflow_id)

    return builder, previous


def create_user(ctx: Any) -> tuple[Operation, Operation]:
    from flowforge.core import events
    from flowforge.db.engine import DB
    from flowforge.db.tables import Role
    from flowforge.domain import users
    from flowforge.outbox.writer import record_event

    tag = uuid.uuid4().hex[:8]
    numbers = itertools.count()  # n restarts every round; emails must not

    async def builder(n: int) -> Any:
        email = f"b{next(numbers)}-{tag}@bench.example"
        async with DB.transaction():
            return await users.create_user(email, "Bench", Role.VIEWER)

    async def previous(n: int) -> Any:
        email = f"p{next(numbers)}-{tag}@bench.example"
        async with DB.transaction() as transaction:
            user = dict(
                await transaction.connection.fetchrow(
                    PREVIOUS_INSERT_USER, email, "Bench", "viewer"
                )
            )
            await record_event(
                events.USER,
                user["id"],
                "user.created",
                {"user_id": user["id"], "email": user["email"], "role": user["role"]},
            )
            return user

    return builder, previous


def run_status_lookup(ctx: Any) -> tuple[Operation, Operation]:
    """The error-path read behind a refused transition (404 vs 409 and its status)."""
    from flowforge.db.engine import DB
    from flowforge.domain import runs

    sample = ctx.loaded.sample_run_ids
    owners = ctx.loaded.user_ids

    async def builder(n: int) -> Any:
        async with DB.transaction():
            return await runs._run_status(sample[n % len(sample)], owners[n % len(owners)])

    async def previous(n: int) -> Any:
        async with DB.transaction() as transaction:
            return await transaction.connection.fetchval(
                PREVIOUS_RUN_STATE, sample[n % len(sample)], owners[n % len(owners)]
            )

    return builder, previous


def readiness_migrations(ctx: Any) -> tuple[Operation, Operation]:
    from flowforge.db import readiness
    from flowforge.db.engine import DB

    async def builder(n: int) -> Any:
        async with DB.transaction():
            return await readiness._applied_migrations()

    async def previous(n: int) -> Any:
        async with DB.transaction() as transaction:
            rows = await transaction.connection.fetch(PREVIOUS_MIGRATIONS)
            return {(row["app_name"], row["name"]) for row in rows}

    return builder, previous


def dead_letters(ctx: Any) -> tuple[Operation, Operation]:
    """The dead-letter list of `outbox_status` (20 oldest)."""
    from flowforge.db.engine import DB
    from flowforge.outbox import status as outbox_status

    async def builder(n: int) -> Any:
        async with DB.transaction():
            return await outbox_status.dead_letters(20)

    async def previous(n: int) -> Any:
        async with DB.transaction() as transaction:
            return [
                dict(row) for row in await transaction.connection.fetch(PREVIOUS_DEAD_LETTERS, 20)
            ]

    return builder, previous


def relay_has_work(ctx: Any) -> tuple[Operation, Operation]:
    """The idle relay's poll: is any event due?"""
    from flowforge.db.engine import DB
    from flowforge.relay import store

    async def builder(n: int) -> Any:
        async with DB.transaction():
            return await store.has_work()

    async def previous(n: int) -> Any:
        async with DB.transaction() as transaction:
            return bool(await transaction.connection.fetchval(PREVIOUS_HAS_WORK))

    return builder, previous


def _a_day_past_retention() -> float:
    """A retention that leaves one day of the data set's history expired: what a
    daily `prune --dry_run` finds (the data set's runs span the 90 days before
    dataset.NOW)."""
    from benchmarks import dataset

    oldest_kept = dataset.NOW - datetime.timedelta(days=89)
    return (datetime.datetime.now(datetime.UTC) - oldest_kept).total_seconds()


def count_expired_events(ctx: Any) -> tuple[Operation, Operation]:
    """`prune --dry_run`'s outbox count."""
    from flowforge.db.engine import DB
    from flowforge.jobs import retention

    keep = _a_day_past_retention()

    async def builder(n: int) -> Any:
        async with DB.transaction():
            return await retention.count_expired_events(keep)

    async def previous(n: int) -> Any:
        async with DB.transaction() as transaction:
            return int(await transaction.connection.fetchval(PREVIOUS_COUNT_OUTBOX, keep))

    return builder, previous


COLD_OPERATIONS = {
    "cold:get_workflow": get_workflow,
    "cold:list_workflows_page": list_workflows_page,
    "cold:rename_workflow": rename_workflow,
    "cold:list_users_page": list_users_page,
    "cold:get_user": get_user,
    "cold:create_user": create_user,
    "cold:list_api_keys_page": list_api_keys_page,
    "cold:run_status_lookup": run_status_lookup,
    "cold:readiness_migrations": readiness_migrations,
    "cold:dead_letters": dead_letters,
    "cold:count_expired_events": count_expired_events,
    "cold:relay_has_work": relay_has_work,
}
