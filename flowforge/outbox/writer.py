"""The transactional outbox: the one module that writes events.

An event is only ever written inside the caller's transaction, so it commits
or rolls back together with the change it describes. A relay publishes
committed events and stamps ``published_at`` (docs/decisions/04-outbox-relay.md).
Every write goes through here: :func:`record_event` / :func:`record_events`
for payloads built in Python (checked against :data:`flowforge.outbox.events.CONTRACT`),
:func:`insert_from` for the hot paths that write a change and its event in
one SQL statement (payloads from :mod:`flowforge.outbox.events`' SQL builders).

Ordering contract: events of one aggregate are published in the order they
were inserted (``outbox.seq``). Record an aggregate's event *after* the
change that locks its row (an UPDATE, or SELECT ... FOR UPDATE) so that two
transactions writing events for the same aggregate serialize, and insertion
order is commit order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, LiteralString
from uuid import UUID

from flowforge.core.json import dumps
from flowforge.db.engine import DB
from flowforge.outbox.events import check_payload

INSERT_EVENT: Final[LiteralString] = """
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
VALUES ($1, $2, $3, $4::jsonb)
RETURNING id
"""


async def record_event(
    aggregate_type: str, aggregate_id: UUID, event_type: str, payload: Mapping[str, Any]
) -> UUID:
    """Write one domain event in the current transaction; returns its id.

    Raises RuntimeError outside a transaction: an event written on its own
    could be published for a change that never committed. Raises ValueError
    when the payload does not match the event contract.
    """
    transaction = DB.require_transaction()
    check_payload(aggregate_type, event_type, payload)
    event_id: UUID = await transaction.connection.fetchval(
        INSERT_EVENT, aggregate_type, aggregate_id, event_type, dumps(payload)
    )
    return event_id


# Many events in one round trip. WITH ORDINALITY + ORDER BY keeps the given
# order, so each row's seq (its publish order) follows the list.
INSERT_EVENTS: Final[LiteralString] = """
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
SELECT e.aggregate_type, e.aggregate_id, e.event_type, e.payload::jsonb
FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[])
    WITH ORDINALITY AS e(aggregate_type, aggregate_id, event_type, payload, n)
ORDER BY e.n
RETURNING id
"""


async def record_events(
    events: Sequence[tuple[str, UUID, str, Mapping[str, Any]]],
) -> list[UUID]:
    """Write several events (aggregate_type, aggregate_id, event_type, payload), in
    order, in the current transaction; returns their ids. Same rules as
    :func:`record_event`."""
    transaction = DB.require_transaction()
    if not events:
        return []
    for aggregate_type, _, event_type, payload in events:
        check_payload(aggregate_type, event_type, payload)
    rows = await transaction.connection.fetch(
        INSERT_EVENTS,
        [event[0] for event in events],
        [event[1] for event in events],
        [event[2] for event in events],
        [dumps(event[3]) for event in events],
    )
    return [row["id"] for row in rows]


def insert_from(
    source: LiteralString,
    *,
    aggregate_type: LiteralString,
    aggregate_id: LiteralString,
    event_type: LiteralString,
    payload: LiteralString,
) -> LiteralString:
    """``INSERT INTO outbox ... SELECT ... FROM <source>``: one event per source row.

    For data-modifying CTEs that write a change and its event in one
    statement; `payload` comes from :mod:`flowforge.outbox.events`' SQL builders,
    `event_type` is a SQL expression (a quoted literal or a parameter).
    """
    return f"""INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
    SELECT '{aggregate_type}', {aggregate_id}, {event_type}, {payload}
    FROM {source}"""  # noqa: S608 - literal fragments; values are bind parameters
