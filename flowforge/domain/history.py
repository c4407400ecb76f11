"""Run history: every state change of a run and of its step attempts, read back.

The rows are written by database triggers in the statement that makes the
change (docs/decisions/14-run-history.md), so this module only reads them, and
names the actor of a transaction that is not a request (a request's actor is
its API key, set by authentication in its own statement: see
:data:`flowforge.db.sql.api_keys.AUTHENTICATE`).

Actors: ``api_key:<id>`` (a request), ``reaper`` (the reaper, in the relay or
``piccolo flowforge reap``), ``cli:<command>`` (e.g. ``cli:seed``), and
``sql:<database user>`` for a change made without one (raw SQL, a migration).
"""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from flowforge.core.errors import NotFoundError
from flowforge.db.engine import DB
from flowforge.db.sql.history import RUN_HISTORY_PAGE, SET_ACTOR
from flowforge.domain.pagination import DEFAULT_LIMIT, decode_cursor, encode_cursor
from flowforge.domain.records import RunHistoryRecord


def _entry(row: Any) -> RunHistoryRecord:
    entry = dict(row)
    del entry["visible_run_id"]
    return cast(RunHistoryRecord, entry)


async def set_actor(actor: str) -> None:
    """Name who makes this transaction's changes (until it ends); one round trip.

    For jobs and commands, in their own transaction, before their first change.
    """
    await DB.require_transaction().connection.execute(SET_ACTOR, actor)


async def list_run_history(
    run_id: UUID,
    *,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
    owner_id: UUID | None = None,
) -> tuple[list[RunHistoryRecord], str | None]:
    """A page of a run's history, oldest first; returns (entries, next cursor or None).

    NotFoundError when the run does not exist or (with `owner_id`) is not the owner's.
    """
    position = decode_cursor(cursor)
    after: tuple[Any, Any] = position if position is not None else (None, None)
    connection = DB.require_transaction().connection
    rows = await connection.fetch(RUN_HISTORY_PAGE, run_id, limit + 1, *after, owner_id)
    if not rows:
        raise NotFoundError("Run not found.", run_id=str(run_id))
    entries = [_entry(row) for row in rows if row["id"] is not None]
    if len(entries) > limit:
        entries = entries[:limit]
        last = entries[-1]
        return entries, encode_cursor(last["recorded_at"], last["id"])
    return entries, None
