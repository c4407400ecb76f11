"""A relay process that hangs half-way through publishing its first batch.

Run as ``python -m tests.relay_worker`` (from the repository root) with the
same environment as ``piccolo flowforge relay``. It is the real relay - same
settings, pool, claim, Redis publisher - except that the first batch sends
half of its events to Redis, then stops dead while holding the claim, so a
test can SIGKILL it mid-batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from flowforge.commands.operations import pool
from flowforge.core.logs import configure_logging
from flowforge.core.settings import get_settings
from flowforge.db.engine import check_configuration
from flowforge.relay.publishers import OutboxEvent, Publisher, PublishOutcome, create_publisher
from flowforge.relay.relay import Relay


class HangsMidBatch:
    name = "hangs-mid-batch"

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner

    async def publish(self, events: Sequence[OutboxEvent]) -> Sequence[PublishOutcome]:
        await self.inner.publish(events[: len(events) // 2])
        print("HALF-PUBLISHED", len(events) // 2, flush=True)
        await asyncio.Event().wait()  # until SIGKILL
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self.inner.close()


async def main() -> None:
    configure_logging()
    check_configuration()
    settings = get_settings()
    async with pool("flowforge-relay", 2):
        await Relay(settings, HangsMidBatch(create_publisher(settings))).run()


if __name__ == "__main__":
    asyncio.run(main())
