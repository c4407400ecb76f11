"""The relay's statements: claim a batch of outbox events, mark it (flowforge.relay.store),
and the LISTEN session's liveness ping (flowforge.relay.listener).

The ordering rule they keep (only an aggregate's oldest unpublished event, its
head, is claimed, with its followers) is explained in :mod:`flowforge.relay.store`.
"""

from __future__ import annotations

from typing import Final, LiteralString

_EVENT_COLUMNS: Final[tuple[LiteralString, ...]] = (
    "id",
    "seq",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "created_at",
    "attempts",
    "dead_lettered_at",
)


def _event_columns(alias: LiteralString) -> LiteralString:
    """A claimed event's columns of the outbox row `alias` (what ``event_from_row`` reads)."""
    return (
        ", ".join(f"{alias}.{column}" for column in _EVENT_COLUMNS)
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

# The listener's liveness ping on its LISTEN session.
PING: Final[LiteralString] = "SELECT 1"
