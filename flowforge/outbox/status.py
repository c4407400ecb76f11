"""How the outbox is doing: lag and dead letters (``/readyz``), and a fuller status (CLI).

Lag is the age of the oldest event waiting to be published (not
dead-lettered), taken in publish order: 0 when the outbox is drained. Events
held behind a dead letter of their aggregate count, since they are stuck
too. Every query here goes through a partial index, so the probes stay cheap
however long the published history is.

Like every data function, these run in the caller's transaction (docs/decisions/01-orm-approach.md):
``/readyz``, ``/metrics``, the relay's stats line and the CLI open it.
"""

from __future__ import annotations

import datetime
from typing import Any, TypedDict, cast
from uuid import UUID

from piccolo.query.methods.select import Select

from flowforge.db.builder import Param, compiled, limited
from flowforge.db.engine import DB
from flowforge.db.sql.outbox import HEALTH, REQUEUE, STATUS
from flowforge.db.tables import Outbox

# The start of each dead letter's last error shown by the status.
LAST_ERROR_SHOWN_CHARS = 300


class DeadLetter(TypedDict):
    id: UUID
    aggregate_type: str
    aggregate_id: UUID
    event_type: str
    attempts: int
    dead_lettered_at: datetime.datetime
    last_error: str | None  # its start (LAST_ERROR_SHOWN_CHARS)


class OutboxHealth(TypedDict):
    lag_seconds: float  # age of the oldest event waiting to be published; 0 when drained
    dead_lettered: int


class DeadLetterOut(TypedDict):
    """A dead letter as JSON-ready data (ids and times as text)."""

    id: str
    aggregate_type: str
    aggregate_id: str
    event_type: str
    attempts: int
    dead_lettered_at: str | None
    last_error: str | None


class OutboxStatus(OutboxHealth):
    unpublished: int
    retrying: int
    held_behind_dead_letters: int
    published: int
    oldest_unpublished_at: str | None
    oldest_published_at: str | None
    dead_letters: list[DeadLetterOut]


def dead_letters_query(limit: int | Param) -> Select[Outbox]:
    """The oldest dead letters first (``outbox_dead_lettered_idx``)."""
    return limited(
        Outbox.select(
            Outbox.id,
            Outbox.aggregate_type,
            Outbox.aggregate_id,
            Outbox.event_type,
            Outbox.attempts,
            Outbox.dead_lettered_at,
            Outbox.last_error,
        )
        .where(Outbox.dead_lettered_at.is_not_null())
        .order_by(Outbox.dead_lettered_at),
        limit,
    )


async def dead_letters(limit: int) -> list[DeadLetter]:
    """Up to `limit` dead letters, oldest first, each error cut to its start."""
    # Compiled once: building the query cost 1.8x the statement itself at 32
    # concurrent (benchmarks/cold.py).
    query = compiled("outbox_status.dead_letters", lambda: dead_letters_query(Param("limit")))
    rows = await query.fetch(limit=limit)
    for row in rows:
        if row["last_error"] is not None:
            row["last_error"] = row["last_error"][:LAST_ERROR_SHOWN_CHARS]
    return cast(list[DeadLetter], rows)


async def outbox_health() -> OutboxHealth:
    """``{"lag_seconds": float, "dead_lettered": int}``: two index probes."""
    row = await DB.require_transaction().connection.fetchrow(HEALTH)
    return {"lag_seconds": round(row["lag_seconds"], 3), "dead_lettered": row["dead_lettered"]}


def _iso(value: datetime.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def outbox_status(dead_letter_limit: int = 20) -> OutboxStatus:
    """Everything an operator asks first, as JSON-ready data."""
    health = await outbox_health()
    row = await DB.require_transaction().connection.fetchrow(STATUS)
    dead = await dead_letters(dead_letter_limit)
    return {
        **health,
        "unpublished": row["unpublished"],
        "retrying": row["retrying"],
        "held_behind_dead_letters": row["held"],
        "published": row["published"],
        "oldest_unpublished_at": _iso(row["oldest_unpublished_at"]),
        "oldest_published_at": _iso(row["oldest_published_at"]),
        "dead_letters": [
            {
                "id": str(item["id"]),
                "aggregate_type": item["aggregate_type"],
                "aggregate_id": str(item["aggregate_id"]),
                "event_type": item["event_type"],
                "attempts": item["attempts"],
                "dead_lettered_at": _iso(item["dead_lettered_at"]),
                "last_error": item["last_error"],
            }
            for item in dead
        ],
    }


async def requeue_dead_letters(event_ids: list[Any] | None = None) -> int:
    """Give dead letters (all, or those in `event_ids`) a fresh attempt budget.

    ``last_error`` is kept as history. Relays are woken (NOTIFY at the
    caller's commit).
    """
    rows = await DB.require_transaction().connection.fetch(REQUEUE, event_ids)
    return len(rows)
