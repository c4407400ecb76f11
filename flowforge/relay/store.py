"""The relay's data functions: claim a batch, mark it, and the cheap "anything to do?" probe
(the one plain query here, on the query builder; the claim and mark statements
are in :mod:`flowforge.db.sql.relay`).

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
from typing import Any
from uuid import UUID

from piccolo.query.methods.exists import Exists

from flowforge.db.builder import NOW, compiled
from flowforge.db.engine import DB
from flowforge.db.sql.relay import CLAIM_FOLLOWERS, CLAIM_HEADS, MARK_FAILED, MARK_PUBLISHED
from flowforge.db.tables import Outbox
from flowforge.relay.event import OutboxEvent

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
