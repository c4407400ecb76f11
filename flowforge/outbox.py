"""The transactional outbox: domain events written with the change they describe.

An event is only ever written inside the caller's transaction, so it commits
or rolls back together with the change. A relay publishes committed events
and stamps ``published_at`` (see docs/decisions.md, decision 4).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from flowforge.db.engine import DB
from flowforge.jsonutil import dumps

INSERT_EVENT = """
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
VALUES ($1, $2, $3, $4::jsonb)
RETURNING id
"""


async def record_event(
    aggregate_type: str, aggregate_id: UUID, event_type: str, payload: Mapping[str, Any]
) -> UUID:
    """Write one domain event in the current transaction; returns its id.

    Raises RuntimeError outside a transaction: an event written on its own
    could be published for a change that never committed.
    """
    transaction = DB.require_transaction()
    event_id: UUID = await transaction.connection.fetchval(
        INSERT_EVENT, aggregate_type, aggregate_id, event_type, dumps(payload)
    )
    return event_id
