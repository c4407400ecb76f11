"""The relay's view of one claimed outbox row: what the store reads and a publisher sends.

Neither SQL nor broker: :mod:`flowforge.relay.store` builds it from a row,
:mod:`flowforge.relay.publishers` sends its :meth:`OutboxEvent.message`.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from uuid import UUID


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One claimed outbox row, as the relay hands it to a publisher."""

    id: UUID
    seq: int
    aggregate_type: str
    aggregate_id: UUID
    event_type: str
    payload: str  # the JSONB object as text, passed through untouched
    created_at: datetime.datetime
    attempts: int  # publish attempts before this one

    @property
    def aggregate(self) -> tuple[str, UUID]:
        return (self.aggregate_type, self.aggregate_id)

    def message(self) -> dict[str, str]:
        """The published message: flat string fields (a Redis stream entry)."""
        return {
            "id": str(self.id),
            "type": self.event_type,
            "aggregate_type": self.aggregate_type,
            "aggregate_id": str(self.aggregate_id),
            "occurred_at": self.created_at.isoformat(),
            "payload": self.payload,
        }
