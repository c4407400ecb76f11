"""The relay's SQL: claim a batch, mark it, and the cheap "anything to do?" probe
(the one plain query here, on the query builder).

Ordering rule: events of one aggregate are published in ``seq`` order, which
for one aggregate is commit order (``seq`` is taken at INSERT time and the
writers of one aggregate serialize on its row lock). So only the *oldest*
unpublished event of an aggregate - its head - may be claimed: while it is
unpublished (in flight in another relay, backing off after a failure, or
dead-lettered) the aggregate's later events wait. Locking the head claims the
whole aggregate: no other relay can lock it (SKIP LOCKED), and no other relay
sees a later event as a head while it is unpublished. The claiming relay then
also takes the head's followers, up to the batch size.

There is no high-water mark: every query looks at all unpublished rows through
partial indexes, so an event whose transaction commits late (with a lower seq
than events already published) is simply claimed on the next pass.

Each function runs in the caller's transaction (docs/decisions/01-orm-approach.md): the relay opens
one per batch, so claim, publish and mark commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, LiteralString
from uuid import UUID

from piccolo.query.methods.exists import Exists

from flowforge.db.builder import NOW, compiled
from flowforge.db.engine import DB
from flowforge.db.tables import Outbox
from flowforge.relay.event import OutboxEvent


def _event_columns(alias: str) -> str:
    columns = (
        "id, seq, aggregate_type, aggregate_id, event_type, created_at, attempts, dead_lettered_at"
    )
    return (
        ", ".join(f"{alias}.{column}" for column in columns.split(", "))
        + f", {alias}.payload::text AS payload, {alias}.next_attempt_at <= now() AS due"
    )


# Heads that are due, oldest first, skipping heads another relay holds.
# Walks outbox_claim_idx in seq order and, per candidate, looks up its
# aggregate's oldest unpublished seq in outbox_aggregate_unpublished_idx.
#
# The head test is a correlated scalar subquery on purpose. Written as
# NOT EXISTS (an anti-join), the planner's row estimate for "published_at IS
# NULL" comes from statistics gathered while nearly everything was published;
# during a burst it believed the backlog was one row and scanned the whole
# partial index once per candidate - 6 s for 500 heads over 20k waiting
# events (tests/test_relay.py reproduces it). A correlated subquery is always
# planned per outer row with the aggregate as an index condition, whatever
# the statistics say. The condition sits in the locking query's own WHERE, so
# only rows that pass it are locked.
CLAIM_HEADS: Final[LiteralString] = f"""
SELECT {_event_columns("o")}
FROM outbox AS o
WHERE o.published_at IS NULL
    AND o.dead_lettered_at IS NULL
    AND o.next_attempt_at <= now()
    AND o.seq = (
        SELECT older.seq FROM outbox AS older
        WHERE older.aggregate_type = o.aggregate_type
            AND older.aggregate_id = o.aggregate_id
            AND older.published_at IS NULL
        ORDER BY older.seq
        LIMIT 1
    )
ORDER BY o.seq
LIMIT $1
FOR UPDATE OF o SKIP LOCKED
"""  # noqa: S608 - constant column list; values are bind parameters

# The unpublished events after each claimed head, through
# outbox_aggregate_unpublished_idx: LATERAL makes each lookup an index range
# scan for its aggregate, however few waiting rows the statistics expect.
# Not SKIP LOCKED: nobody else can hold them while we hold their head, and a
# gap in an aggregate's sequence must never be skipped over.
CLAIM_FOLLOWERS: Final[LiteralString] = f"""
SELECT {_event_columns("f")}
FROM unnest($1::text[], $2::uuid[], $3::bigint[]) AS head(aggregate_type, aggregate_id, seq)
CROSS JOIN LATERAL (
    SELECT * FROM outbox AS o
    WHERE o.aggregate_type = head.aggregate_type
        AND o.aggregate_id = head.aggregate_id
        AND o.seq > head.seq
        AND o.published_at IS NULL
    ORDER BY o.seq
    LIMIT $4
) AS f
ORDER BY f.seq
LIMIT $4
FOR UPDATE OF f
"""  # noqa: S608 - constant column list; values are bind parameters

MARK_PUBLISHED: Final[LiteralString] = """
UPDATE outbox
SET published_at = clock_timestamp(), attempts = attempts + 1
WHERE id = ANY($1::uuid[]) AND published_at IS NULL
"""

# Exponential back-off: the n-th failure waits min(base * 2^(n-1), max) seconds;
# the failure that reaches max attempts dead-letters the event instead.
MARK_FAILED: Final[LiteralString] = """
UPDATE outbox AS o
SET attempts = o.attempts + 1,
    last_error = f.error,
    next_attempt_at = clock_timestamp()
        + make_interval(secs => least($3::float8 * power(2, o.attempts), $4::float8)),
    dead_lettered_at = CASE WHEN o.attempts + 1 >= $5 THEN clock_timestamp() END
FROM unnest($1::uuid[], $2::text[]) AS f(id, error)
WHERE o.id = f.id AND o.published_at IS NULL
RETURNING o.id, o.aggregate_type, o.aggregate_id, o.event_type, o.attempts,
    o.dead_lettered_at IS NOT NULL AS dead_lettered
"""

LAST_ERROR_MAX_CHARS = 2000


def event_from_row(row: Any) -> OutboxEvent:
    return OutboxEvent(
        id=row["id"],
        seq=row["seq"],
        aggregate_type=row["aggregate_type"],
        aggregate_id=row["aggregate_id"],
        event_type=row["event_type"],
        payload=row["payload"],
        created_at=row["created_at"],
        attempts=row["attempts"],
    )


async def claim_batch(batch_size: int) -> list[OutboxEvent]:
    """Lock up to `batch_size` publishable events; returned in publish (seq) order.

    Per aggregate the result is a contiguous run starting at its head. Runs
    in the transaction that will mark them.
    """
    connection = DB.require_transaction().connection
    heads = await connection.fetch(CLAIM_HEADS, batch_size)
    events = [event_from_row(row) for row in heads]
    room = batch_size - len(events)
    if heads and room > 0:
        followers = await connection.fetch(
            CLAIM_FOLLOWERS,
            [row["aggregate_type"] for row in heads],
            [row["aggregate_id"] for row in heads],
            [row["seq"] for row in heads],
            room,
        )
        # A follower that cannot go now (dead-lettered or backing off: only
        # possible after manual edits) ends its aggregate's run in this batch.
        stopped: set[tuple[str, UUID]] = set()
        for row in followers:
            key = (row["aggregate_type"], row["aggregate_id"])
            if key in stopped:
                continue
            if row["dead_lettered_at"] is not None or not row["due"]:
                stopped.add(key)
                continue
            events.append(event_from_row(row))
        events.sort(key=lambda event: event.seq)
    return events


async def mark_published(event_ids: Sequence[UUID]) -> int:
    """Stamp published_at (and count the attempt); returns the rows marked."""
    status: str = await DB.require_transaction().connection.execute(MARK_PUBLISHED, list(event_ids))
    return int(status.split()[-1])


async def mark_failed(
    failures: Sequence[tuple[UUID, str]],
    *,
    base_delay: float,
    max_delay: float,
    max_attempts: int,
) -> list[Any]:
    """Record failed attempts with back-off; dead-letter those out of attempts."""
    rows: list[Any] = await DB.require_transaction().connection.fetch(
        MARK_FAILED,
        [event_id for event_id, _ in failures],
        [error[:LAST_ERROR_MAX_CHARS] for _, error in failures],
        base_delay,
        max_delay,
        max_attempts,
    )
    return rows


def due_events_exist() -> Exists[Outbox]:
    """Is any event due? One index probe of ``outbox_claim_idx``."""
    return Outbox.exists().where(
        Outbox.published_at.is_null(),
        Outbox.dead_lettered_at.is_null(),
        Outbox.next_attempt_at <= NOW,
    )


async def has_work() -> bool:
    """The idle relay's poll, in the caller's transaction."""
    row = await compiled("relay.has_work", due_events_exist).first()
    return row is not None and bool(row["exists"])
