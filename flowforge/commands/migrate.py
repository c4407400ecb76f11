"""`piccolo flowforge migrate`: every app's pending migrations, one process at a time.

Piccolo's ``migrations forwards`` takes no lock: two processes started together
(two app replicas, a rolling deploy, a second ``docker compose up``) both read
"not yet run" and apply the same migration twice. This command holds a
PostgreSQL session advisory lock on a connection of its own while it runs
Piccolo's forwards for all apps; a second runner waits for the lock (polling,
see :func:`_take_lock`), then finds nothing to do. The lock goes with the connection, so a runner that dies
releases it.

Piccolo's own ``piccolo migrations forwards|backwards`` take the same lock for
the whole process (:func:`hold_lock_until_exit`, called when Piccolo's CLI
imports FlowForge's conf: flowforge/commands/piccolo_cli.py), so replicas that
run the plain command as a start-up step are safe too.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import sys
import threading
import time
from typing import TextIO, cast

import asyncpg
from piccolo.apps.migrations.commands.base import BaseMigrationManager
from piccolo.apps.migrations.commands.forwards import ForwardsMigrationManager
from piccolo.apps.migrations.tables import Migration
from piccolo.utils.printing import print_heading

from flowforge.db.engine import DB, HEALABLE_START_ERRORS, describe_start_error
from flowforge.db.sql.migrate import TRY_LOCK, UNLOCK_ALL

# pg_advisory_lock key of the migration run: b"FlowForg" as a big-endian bigint.
MIGRATION_LOCK_KEY = 0x466C6F77466F7267


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


async def _connect() -> asyncpg.Connection:
    """The lock's own connection (never pooled: the lock lives and dies with it)."""
    try:
        return await asyncpg.connect(
            dsn=DB.config["dsn"],
            timeout=DB.settings.connect_timeout,
            server_settings={"application_name": "flowforge-migrate"},
        )
    except HEALABLE_START_ERRORS as error:
        raise fail(describe_start_error(error)) from None


def hold_lock_until_exit() -> None:
    """Take the migration lock for the rest of this process, waiting for a holder.

    For Piccolo's own ``migrations forwards|backwards``, where FlowForge's only
    hook is the import of its conf, before Piccolo creates its ``migration``
    table (concurrent ``CREATE TABLE IF NOT EXISTS`` collide on
    ``pg_type_typname_nsp_index``). A daemon thread keeps the connection, idle
    and outside any transaction, until the process exits and its socket closes.
    """
    taken = threading.Event()
    problems: list[SystemExit] = []

    async def hold() -> None:
        try:
            connection = await _connect()
            await _take_lock(connection)
        except SystemExit as error:
            problems.append(error)
            return
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            problems.append(fail(f"{type(error).__name__}: {error}"))
            return
        finally:
            taken.set()
        await asyncio.Event().wait()  # never set: held until the process ends

    threading.Thread(
        target=asyncio.run, args=(hold(),), name="flowforge-migration-lock", daemon=True
    ).start()
    taken.wait()
    if problems:
        raise problems[0]
    _without_statement_timeout()


# Piccolo's forwards prints the number of migration *files* as "already
# complete" (piccolo 1.38, forwards.py: len(ids)); on an empty database that is
# "8 migrations already complete" and "8 migrations not yet run".
_MISCOUNT = re.compile(r"^\S+ \d+ migrations? already complete\n", re.MULTILINE)


class _WithoutMiscount(io.TextIOBase):
    """stdout without Piccolo's wrong "already complete" line (the true one is ours)."""

    def __init__(self, target: TextIO) -> None:
        self._target = target
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        complete, _, self._pending = self._pending.rpartition("\n")
        if complete:
            self._target.write(_MISCOUNT.sub("", complete + "\n"))
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._target.write(self._pending)
            self._pending = ""
        self._target.flush()


async def _forwards_all() -> None:
    """Piccolo's forwards for every app, in dependency order, with true counts."""
    for app_name in BaseMigrationManager().get_sorted_app_names():
        print_heading(app_name)
        manager = ForwardsMigrationManager(app_name=app_name, migration_id="all")
        await manager.create_migration_table()
        app_config = manager.get_app_config(app_name=app_name)
        ids = manager.get_migration_ids(
            manager.get_migration_modules(app_config.resolved_migrations_folder_path)
        )
        ran = set(await Migration.get_migrations_which_ran(app_name=app_name))
        done = len(ran.intersection(ids))
        print(f"{done} of {len(ids)} migration{'s' if len(ids) != 1 else ''} already complete")
        filtered = _WithoutMiscount(sys.stdout)
        with contextlib.redirect_stdout(cast(TextIO, filtered)):
            try:
                result = await manager.run()
            finally:
                filtered.flush()
        if not result.success:
            raise fail(result.message or "Piccolo reported a failed migration")


async def migrate() -> None:
    """Apply all pending migrations of every app, holding the migration lock.

    Safe to run from several processes at once: each migration is applied
    once; the other runners wait, then report that nothing needs to run.
    Exit status 1, with one line saying why, when the database cannot be
    reached or a migration fails.
    """
    lock = await _connect()
    try:
        await _take_lock(lock)
        _without_statement_timeout()
        try:
            await _forwards_all()
        except SystemExit:
            raise
        except Exception as error:
            raise fail(f"{type(error).__name__}: {error}") from None
    finally:
        # Closing the session releases the lock too; unlock first to say so.
        try:
            await lock.execute(UNLOCK_ALL)
        finally:
            await lock.close()
