"""Concurrency limits on the direct start (issue 18); the claim's side is flowforge.domain.queue.

A workflow's ``max_concurrency`` and its named ``concurrency_limits`` row cap
its runs in ``running``. Every path into running takes the limits' row locks
(``FOR NO KEY UPDATE``) before it counts the running runs in a new snapshot, and
holds them until it commits: the count cannot be stale, whichever claims and
starts race (docs/decisions/16-run-queue.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast
from uuid import UUID

from piccolo.columns import Column
from piccolo.custom_types import Combinable
from piccolo.query.methods.select import Select
from piccolo.querystring import QueryString

from flowforge.core.errors import ConcurrencyLimitError, NotFoundError
from flowforge.db.builder import Param, compiled, limited, new_row, page_after
from flowforge.db.engine import DB
from flowforge.db.sql.queue import LOCK_START_SLOTS, START_SLOTS
from flowforge.db.sql.workflows import LIMIT_WORKFLOW_COUNT
from flowforge.db.tables import ConcurrencyLimit
from flowforge.domain.pagination import DEFAULT_LIMIT, decode_cursor, page
from flowforge.domain.records import ConcurrencyLimitRecord


def held_back_by(slots: Mapping[str, Any]) -> str | None:
    """Why a workflow's due run cannot start now (a row of the slots query), or None."""
    workflow_free, limit_free = slots["workflow_free"], slots["limit_free"]
    if workflow_free is not None and workflow_free <= 0:
        return "workflow_concurrency"
    if limit_free is not None and limit_free <= 0:
        return f"concurrency_limit:{slots['limit_name']}"
    return None


async def reserve_start_slot(run_id: UUID, owner_id: UUID | None) -> None:
    """Lock the run's limits and raise ConcurrencyLimitError if one is full.

    A run that is not visible passes (the transition then reports it).
    """
    connection = DB.require_transaction().connection
    row = await connection.fetchrow(LOCK_START_SLOTS, run_id, owner_id)
    if row is None or not row["locks"] or row["status"] != "pending":
        return  # not visible, unlimited, or not startable: the transition reports it
    slots = await connection.fetchrow(START_SLOTS, row["workflow_id"])
    assert slots is not None
    reason = held_back_by(slots)
    if reason is not None:
        raise ConcurrencyLimitError(
            "Starting this run would exceed its "
            + (
                "workflow's max_concurrency"
                if reason == "workflow_concurrency"
                else f"concurrency limit {slots['limit_name']!r}"
            )
            + "; it stays pending until a running run ends.",
            run_id=str(run_id),
            waiting_reason=reason,
        )


# -- the concurrency_limits resource (admins change them; anyone with read sees them) -----

LIMIT_COLUMNS = (
    ConcurrencyLimit.id,
    ConcurrencyLimit.name,
    ConcurrencyLimit.max_running,
    ConcurrencyLimit.created_at,
    ConcurrencyLimit.updated_at,
)


def _limit_key(key: str) -> Combinable:
    """The limit named `key`, or whose id it is (a name never looks like a UUID's text)."""
    try:
        return ConcurrencyLimit.id == UUID(key)
    except ValueError:
        return ConcurrencyLimit.name == key


def _not_found(key: str) -> NotFoundError:
    return NotFoundError(f"There is no concurrency limit {key!r}.", concurrency_limit=key)


def _select() -> Select[ConcurrencyLimit]:
    return ConcurrencyLimit.select(
        *LIMIT_COLUMNS, QueryString(LIMIT_WORKFLOW_COUNT).as_alias("workflow_count")
    )


async def create_limit(name: str, max_running: int) -> ConcurrencyLimitRecord:
    """Insert a limit; a taken name is a ConflictError (concurrency_limits_name_key)."""
    DB.require_transaction()
    rows = (
        await ConcurrencyLimit.insert(new_row(ConcurrencyLimit, name=name, max_running=max_running))
        .returning(*LIMIT_COLUMNS)
        .run()
    )
    return cast(ConcurrencyLimitRecord, {**rows[0], "workflow_count": 0})


async def get_limit(key: str) -> ConcurrencyLimitRecord:
    """A limit by name or id; NotFoundError if there is none."""
    row = await _select().where(_limit_key(key)).first().run()
    if row is None:
        raise _not_found(key)
    return cast(ConcurrencyLimitRecord, row)


async def list_limits(
    *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> tuple[list[ConcurrencyLimitRecord], str | None]:
    """A page of limits, newest first (keyset pagination, as every list)."""
    position = decode_cursor(cursor)

    def build() -> Select[ConcurrencyLimit]:
        query = limited(
            _select().order_by(ConcurrencyLimit.created_at, ConcurrencyLimit.id, ascending=False),
            Param("limit"),
        )
        if position is not None:
            query = query.where(page_after(ConcurrencyLimit, (Param("created_at"), Param("id"))))
        return query

    created_at, after_id = position if position is not None else (None, None)
    rows = await compiled(("limits.list", position is not None), build).fetch(
        limit=limit + 1, created_at=created_at, id=after_id
    )
    return page([cast(ConcurrencyLimitRecord, row) for row in rows], limit)


async def update_limit(key: str, changes: Mapping[str, Any]) -> ConcurrencyLimitRecord:
    """Rename a limit or change its max_running (0 pauses its workflows' runs).

    A lower max_running than the runs now running stops none of them: no new run
    of its workflows starts until they are fewer than it.
    """
    DB.require_transaction()
    columns: dict[str, Column] = {
        "name": ConcurrencyLimit.name,
        "max_running": ConcurrencyLimit.max_running,
    }
    unknown = set(changes) - set(columns)
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    if changes:
        values: dict[Column | str, Any] = {columns[name]: value for name, value in changes.items()}
        rows = (
            await ConcurrencyLimit.update(values)
            .where(_limit_key(key))
            .returning(ConcurrencyLimit.id)
            .run()
        )
        if not rows:
            raise _not_found(key)
        key = str(rows[0]["id"])
    return await get_limit(key)


async def delete_limit(key: str) -> None:
    """Delete a limit; one that workflows still use is a ConflictError (the FK restricts)."""
    DB.require_transaction()
    rows = (
        await ConcurrencyLimit.delete().where(_limit_key(key)).returning(ConcurrencyLimit.id).run()
    )
    if not rows:
        raise _not_found(key)
