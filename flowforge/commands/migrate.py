"""`piccolo flowforge migrate`: every app's pending migrations, one process at a time.

Piccolo's ``migrations forwards`` takes no lock: two processes started together
(two app replicas, a rolling deploy, a second ``docker compose up``) both read
"not yet run" and apply the same migration twice. This command holds a
PostgreSQL session advisory lock on a connection of its own while it runs
Piccolo's forwards for all apps; a second runner waits for the lock (polling,
see :func:`_take_lock`), then finds nothing to do. The lock goes with the connection, so a runner that dies
releases it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Final, LiteralString

import asyncpg
from piccolo.apps.migrations.commands.forwards import run_forwards

from flowforge.db.engine import DB, HEALABLE_START_ERRORS, describe_start_error

# pg_advisory_lock key of the migration run: b"FlowForg" as a big-endian bigint.
MIGRATION_LOCK_KEY = 0x466C6F77466F7267


TRY_LOCK: Final[LiteralString] = "SELECT pg_try_advisory_lock($1)"
UNLOCK_ALL: Final[LiteralString] = "SELECT pg_advisory_unlock_all()"

# How often a waiting runner tries the lock again.
LOCK_POLL_SECONDS = 0.5


async def _take_lock(connection: asyncpg.Connection) -> None:
    """Take the migration lock, trying again until the holder is done.

    Never a blocking pg_advisory_lock(): a statement waiting on the lock keeps
    its snapshot open, and CREATE INDEX CONCURRENTLY in the holder's migration
    waits for every older snapshot - each runner would wait for the other
    until the statement timeout (seen with two concurrent runs). Short
    pg_try_advisory_lock() calls hold no snapshot between tries.
    """
    if await connection.fetchval(TRY_LOCK, MIGRATION_LOCK_KEY):
        return
    print("another migration run holds the lock; waiting for it", flush=True)
    started = time.monotonic()
    while True:
        await asyncio.sleep(LOCK_POLL_SECONDS)
        if await connection.fetchval(TRY_LOCK, MIGRATION_LOCK_KEY):
            break
    print(f"lock acquired after {time.monotonic() - started:.1f} s", flush=True)


def _without_statement_timeout() -> None:
    """Let migration statements run as long as they need.

    DB_STATEMENT_TIMEOUT bounds requests; a migration is not one: building an
    index CONCURRENTLY on a large table can take minutes, and cancelling it
    half-way leaves an invalid index behind.
    """
    config = DB.config
    DB.config = {
        **config,
        "command_timeout": None,
        "server_settings": {
            **config["server_settings"],
            "application_name": "flowforge-migrate",
            "statement_timeout": "0",
        },
    }


def fail(message: str) -> SystemExit:
    print(f"FlowForge cannot migrate: {message}", file=sys.stderr)
    return SystemExit(1)


async def migrate() -> None:
    """Apply all pending migrations of every app, holding the migration lock.

    Safe to run from several processes at once: each migration is applied
    once; the other runners wait, then report that nothing needs to run.
    Exit status 1, with one line saying why, when the database cannot be
    reached or a migration fails.
    """
    settings = DB.settings
    try:
        lock = await asyncpg.connect(
            dsn=DB.config["dsn"],
            timeout=settings.connect_timeout,
            server_settings={"application_name": "flowforge-migrate"},
        )
    except HEALABLE_START_ERRORS as error:
        raise fail(describe_start_error(error)) from None
    try:
        await _take_lock(lock)
        _without_statement_timeout()
        try:
            result = await run_forwards(app_name="all", migration_id="all")
        except Exception as error:
            raise fail(f"{type(error).__name__}: {error}") from None
        if not result.success:
            raise fail(result.message or "Piccolo reported a failed migration")
    finally:
        # Closing the session releases the lock too; unlock first to say so.
        try:
            await lock.execute(UNLOCK_ALL)
        finally:
            await lock.close()
