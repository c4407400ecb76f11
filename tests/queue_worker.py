"""A queue worker process that claims runs and then stops dead (no heartbeats).

Run as ``python -m tests.queue_worker <n>`` from the repository root with
DATABASE_URL set: it claims up to n due runs through the real domain
operation, commits, prints ``CLAIMED <id>,<id>,...`` and waits for SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import sys

from flowforge.db.engine import DB
from flowforge.domain import queue


async def main(limit: int) -> None:
    await DB.start_connection_pool(min_size=1, max_size=2)
    async with DB.transaction():
        claimed = await queue.claim_runs(f"doomed-{os.getpid()}", limit=limit)
    print("CLAIMED", ",".join(str(run["id"]) for run in claimed), flush=True)
    await asyncio.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
