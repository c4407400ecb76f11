"""How the outbox is doing: lag and dead letters (``/readyz``), and a fuller status (CLI).

Lag is the age of the oldest event waiting to be published (not
dead-lettered), taken in publish order: 0 when the outbox is drained. Events
held behind a dead letter of their aggregate count, since they are stuck
too. Every query here goes through a partial index, so the probes stay cheap
however long the published history is.
"""

from __future__ import annotations

import datetime
from typing import Any, Final, LiteralString

from flowforge.db.engine import DB

HEALTH: Final[LiteralString] = """
SELECT
    GREATEST(0, COALESCE(EXTRACT(EPOCH FROM now() - (
        SELECT created_at FROM outbox
        WHERE published_at IS NULL AND dead_lettered_at IS NULL
        ORDER BY seq LIMIT 1
    )), 0))::float8 AS lag_seconds,
    (SELECT count(*) FROM outbox WHERE dead_lettered_at IS NOT NULL) AS dead_lettered
"""

STATUS: Final[LiteralString] = """
SELECT
    (SELECT count(*) FROM outbox
        WHERE published_at IS NULL AND dead_lettered_at IS NULL) AS unpublished,
    (SELECT count(*) FROM outbox
        WHERE published_at IS NULL AND dead_lettered_at IS NULL AND attempts > 0) AS retrying,
    (SELECT count(*) FROM outbox AS dead
        JOIN outbox AS o
            ON o.aggregate_type = dead.aggregate_type
            AND o.aggregate_id = dead.aggregate_id
            AND o.published_at IS NULL
            AND o.dead_lettered_at IS NULL
            AND o.seq > dead.seq
        WHERE dead.dead_lettered_at IS NOT NULL) AS held,
    (SELECT count(*) FROM outbox WHERE published_at IS NOT NULL) AS published,
    (SELECT min(published_at) FROM outbox WHERE published_at IS NOT NULL) AS oldest_published_at,
    (SELECT created_at FROM outbox
        WHERE published_at IS NULL AND dead_lettered_at IS NULL
        ORDER BY seq LIMIT 1) AS oldest_unpublished_at
"""

DEAD_LETTERS: Final[LiteralString] = """
SELECT id, aggregate_type, aggregate_id, event_type, attempts, dead_lettered_at,
    left(last_error, 300) AS last_error
FROM outbox
WHERE dead_lettered_at IS NOT NULL
ORDER BY dead_lettered_at
LIMIT $1
"""


async def outbox_health() -> dict[str, Any]:
    """``{"lag_seconds": float, "dead_lettered": int}``: two index probes."""
    row = (await DB.fetch(HEALTH))[0]
    return {"lag_seconds": round(row["lag_seconds"], 3), "dead_lettered": row["dead_lettered"]}


def _iso(value: datetime.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def outbox_status(dead_letter_limit: int = 20) -> dict[str, Any]:
    """Everything an operator asks first, as JSON-ready data."""
    health = await outbox_health()
    row = (await DB.fetch(STATUS))[0]
    dead = await DB.fetch(DEAD_LETTERS, dead_letter_limit)
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


REQUEUE: Final[LiteralString] = """
WITH requeued AS (
    UPDATE outbox
    SET dead_lettered_at = NULL, attempts = 0, next_attempt_at = now()
    WHERE dead_lettered_at IS NOT NULL AND ($1::uuid[] IS NULL OR id = ANY($1::uuid[]))
    RETURNING id
)
SELECT id, pg_notify('flowforge_outbox', '') FROM requeued
"""


async def requeue_dead_letters(event_ids: list[Any] | None = None) -> int:
    """Give dead letters (all, or those in `event_ids`) a fresh attempt budget.

    ``last_error`` is kept as history. Relays are woken (NOTIFY at commit).
    """
    async with DB.transaction() as transaction:
        rows = await transaction.connection.fetch(REQUEUE, event_ids)
    return len(rows)
