"""The transactional outbox: the one module that writes events.

An event is only ever written inside the caller's transaction, so it commits
or rolls back together with the change it describes. A relay publishes
committed events and stamps ``published_at`` (docs/decisions/04-outbox-relay.md).
Every write goes through here: :func:`record_event` / :func:`record_events`
for payloads built in Python (checked against :data:`flowforge.core.events.CONTRACT`),
and, for the hot paths that write a change and its event in one SQL
statement, :func:`flowforge.db.sql.outbox.insert_from` with the payloads
built in SQL next to it (the statements live in the SQL home, ``flowforge/db/sql/``).

Ordering contract: events of one aggregate are published in the order they
were inserted (``outbox.seq``). Record an aggregate's event *after* the
change that locks its row (an UPDATE, or SELECT ... FOR UPDATE) so that two
transactions writing events for the same aggregate serialize, and insertion
order is commit order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from flowforge.core.events import check_payload
from flowforge.core.json import dumps
from flowforge.db.engine import DB
from flowforge.db.sql.outbox import INSERT_EVENT, INSERT_EVENTS


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
