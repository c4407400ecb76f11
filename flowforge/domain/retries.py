"""Step retry policies: when a failed attempt puts its run back in the queue (issue 18).

A step's ``retry_policy`` (validated on write: ``flowforge.api.schemas.RetryPolicy``)::

    {"max_attempts": 3,
     "backoff": {"initial_seconds": 1, "max_seconds": 300, "multiplier": 2},
     "jitter": 0.1}

``{}`` (the default) is one attempt: no retry. When an attempt of a running run
that a worker claimed from the queue is logged or finished as failed and its number is below ``max_attempts``, the
run moves to ``awaiting_retry`` with ``next_attempt_at`` = now + the backoff of
that attempt: ``min(initial * multiplier ** (attempt - 1), max)``, plus up to
``jitter`` of it (random, never less: a retry is never early). The claim picks
it up when due. When attempts are exhausted the run stays running: its executor
fails it (or moves on), as before. A run started by id (``POST /runs/{id}/start``)
is not the queue's: its executor retries in its own loop, as before issue 18
(the seed does), and a failed attempt leaves it running.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

from flowforge.core.json import loads
from flowforge.db.engine import DB
from flowforge.db.sql.queue import SCHEDULE_RETRY, STEP_RETRY_POLICY

DEFAULT_INITIAL_SECONDS: Final = 1.0
DEFAULT_MAX_SECONDS: Final = 300.0
DEFAULT_MULTIPLIER: Final = 2.0


@dataclass(frozen=True)
class Policy:
    max_attempts: int = 1
    initial_seconds: float = DEFAULT_INITIAL_SECONDS
    max_seconds: float = DEFAULT_MAX_SECONDS
    multiplier: float = DEFAULT_MULTIPLIER
    jitter: float = 0.0

    @classmethod
    def from_json(cls, policy: Mapping[str, Any]) -> Policy:
        backoff = policy.get("backoff") or {}
        return cls(
            max_attempts=int(policy.get("max_attempts", 1)),
            initial_seconds=float(backoff.get("initial_seconds", DEFAULT_INITIAL_SECONDS)),
            max_seconds=float(backoff.get("max_seconds", DEFAULT_MAX_SECONDS)),
            multiplier=float(backoff.get("multiplier", DEFAULT_MULTIPLIER)),
            jitter=float(policy.get("jitter", 0.0)),
        )

    def base_delay(self, attempt: int) -> float:
        """The backoff after failed attempt number `attempt` (1-based), before jitter."""
        return min(self.initial_seconds * self.multiplier ** (attempt - 1), self.max_seconds)

    def delay(self, attempt: int) -> float:
        """The backoff plus jitter: in [base, base * (1 + jitter)]."""
        base = self.base_delay(attempt)
        return base * (1.0 + self.jitter * random.random())  # noqa: S311 - not security


async def retry_after_failure(
    run_id: UUID, step_id: UUID | None, attempt: int, error: str | None
) -> bool:
    """Move a running run to awaiting_retry if its step's policy allows another attempt.

    Call after a failed attempt was logged, in the caller's transaction (which
    holds the run's row lock). Returns whether the run now awaits a retry.
    """
    if step_id is None:
        return False
    connection = DB.require_transaction().connection
    raw = await connection.fetchval(STEP_RETRY_POLICY, step_id)
    if raw is None:
        return False
    try:
        policy = Policy.from_json(loads(raw))
    except (TypeError, ValueError, AttributeError):
        return False  # a policy stored before policies were validated: no retry
    if attempt >= policy.max_attempts:
        return False
    row = await connection.fetchrow(
        SCHEDULE_RETRY,
        run_id,
        policy.delay(attempt),
        f"Attempt {attempt} failed; retrying: {error or 'no error given'}",
    )
    return row is not None
