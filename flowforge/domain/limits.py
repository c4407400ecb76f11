"""Concurrency limits on the direct start (issue 18); the claim's side is flowforge.domain.queue.

A workflow's ``max_concurrency`` and its named ``concurrency_limits`` row cap
its runs in ``running``. Every path into running takes the limits' row locks
(``FOR NO KEY UPDATE``) before it counts the running runs in a new snapshot, and
holds them until it commits: the count cannot be stale, whichever claims and
starts race (docs/decisions/16-run-queue.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from flowforge.core.errors import ConcurrencyLimitError
from flowforge.db.engine import DB
from flowforge.db.sql.queue import LOCK_START_SLOTS, START_SLOTS


def held_back_by(slots: Mapping[str, Any]) -> str | None:
    """Why a workflow's due run cannot start now (a row of the slots query), or None."""
    workflow_free, limit_free = slots["workflow_free"], slots["limit_free"]
    if workflow_free is not None and workflow_free <= 0:
        return "workflow_concurrency"
    if limit_free is not None and limit_free <= 0:
        return f"concurrency_limit:{slots['limit_name']}"
    return None


async def reserve_start_slot(run_id: UUID, owner_id: UUID | None) -> None:
    """Lock the run's limits and raise ConcurrencyLimitError if one is full.

    A run that is not visible passes (the transition then reports it).
    """
    connection = DB.require_transaction().connection
    row = await connection.fetchrow(LOCK_START_SLOTS, run_id, owner_id)
    if row is None or not row["locks"] or row["status"] != "pending":
        return  # not visible, unlimited, or not startable: the transition reports it
    slots = await connection.fetchrow(START_SLOTS, row["workflow_id"])
    assert slots is not None
    reason = held_back_by(slots)
    if reason is not None:
        raise ConcurrencyLimitError(
            "Starting this run would exceed its "
            + (
                "workflow's max_concurrency"
                if reason == "workflow_concurrency"
                else f"concurrency limit {slots['limit_name']!r}"
            )
            + "; it stays pending until a running run ends.",
            run_id=str(run_id),
            waiting_reason=reason,
        )
