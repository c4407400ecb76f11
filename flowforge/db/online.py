"""Building blocks for raw migrations that run while the app serves (docs/migrations.md).

A migration that uses these declares ``MigrationManager(wrap_in_transaction=False)``
and does its work in ``add_raw`` / ``add_raw_backwards`` callables through an
:class:`OnlineMigration`: a connection of its own (no statement timeout, a
bounded lock wait, UTC) on which each step is one of

* :meth:`~OnlineMigration.locked`: catalog-only DDL (ADD COLUMN nullable, ADD
  CONSTRAINT ... NOT VALID, a trigger, a rename) in one short transaction whose
  wait for its lock is bounded by ``lock_timeout`` and retried: a waiting ACCESS
  EXCLUSIVE request queues every query on the table behind it, so it must give
  up quickly rather than wait long;
* :meth:`~OnlineMigration.build_index` / :meth:`~OnlineMigration.drop_index`:
  ``CONCURRENTLY``, outside any transaction; an INVALID index left by an
  interrupted build is dropped and built again;
* :meth:`~OnlineMigration.add_constraint` then :meth:`~OnlineMigration.validate`:
  NOT VALID (catalog only), then VALIDATE (a scan that blocks neither reads nor
  writes); a violation names the rows that break it;
* :meth:`~OnlineMigration.backfill`: key-set batches, one transaction each,
  progress printed; the batch statement only touches rows that still need it,
  so a killed run is simply run again (it skips what is done), and a batch that
  fails on bad data names the rows.

Every step is idempotent (it looks before it acts, or uses IF [NOT] EXISTS), so
a migration killed at any point runs again from the start, forwards or
backwards. Each step prints ``[<name>] <step>: <seconds> s`` (``(exclusive)`` for
a step holding an ACCESS EXCLUSIVE lock); ``benchmarks/migrations.py`` reports
those lines per migration.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, LiteralString

import asyncpg
from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from flowforge.db.sql import online as sql

# The wait for the lock of a short exclusive step, and how often it is tried.
LOCK_TIMEOUT = "2s"
LOCK_ATTEMPTS = 30
# The wait for any other lock (VALIDATE's, a CONCURRENTLY build's): these block
# no reads or writes, so waiting longer is harmless, but never forever.
SESSION_LOCK_TIMEOUT = "30s"
BATCH_ROWS = 5000
# A batch that deadlocks with, or fails to serialize against, an app transaction
# is run again this many times.
BATCH_ATTEMPTS = 5
PROGRESS_SECONDS = 5.0
# Rows named when bad data stops a step.
SHOWN_ROWS = 10

RETRIED_LOCK_ERRORS = (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError)
RETRIED_BATCH_ERRORS = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.LockNotAvailableError,
)
# What bad data raises: a constraint or a cast that a row does not satisfy.
DATA_ERRORS = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)


class MigrationDataError(RuntimeError):
    """Rows stop the migration. The message names them and says what to do;
    everything done so far stays (each step is idempotent): fix the rows and
    run the migration again, or step it back."""

    def __init__(self, step: str, cause: str, rows: Sequence[Any], advice: str) -> None:
        self.step, self.rows = step, list(rows)
        shown = "\n".join(f"  {dict(row)}" for row in self.rows[:SHOWN_ROWS])
        more = (
            f"\n  ... ({len(self.rows)} rows shown at most {SHOWN_ROWS})"
            if len(rows) > SHOWN_ROWS
            else ""
        )
        super().__init__(f"{step}: {cause}\nrows:\n{shown or '  (none found)'}{more}\n{advice}")


@dataclass(frozen=True)
class Backfilled:
    rows: int
    batches: int
    seconds: float


class OnlineMigration:
    """One raw migration's steps on a connection of its own; see the module docstring."""

    def __init__(
        self, connection: asyncpg.Connection, name: str, report: Callable[[str], None] = print
    ) -> None:
        self.connection = connection
        self.name = name
        self.report = report

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, name: str) -> AsyncIterator[OnlineMigration]:
        """A connection like Piccolo's engine's (``engine_finder()``), with the
        migration's session settings. Refused inside a Piccolo transaction: the
        migration must say ``wrap_in_transaction=False`` (a CONCURRENTLY build or a
        batch committed on another connection would wait on that transaction's
        locks)."""
        from piccolo.engine import PostgresEngine, engine_finder

        engine = engine_finder()
        if not isinstance(engine, PostgresEngine):
            raise RuntimeError("no PostgreSQL engine (piccolo_conf) to migrate with")
        current = getattr(engine, "current_transaction", None)
        if current is not None and current.get() is not None:
            raise RuntimeError(
                f"{name}: an online migration runs outside Piccolo's transaction: "
                "MigrationManager(..., wrap_in_transaction=False)"
            )
        config = {**engine.config, "command_timeout": None}
        connection = await asyncpg.connect(**config)
        try:
            for setting, value in (
                ("statement_timeout", "0"),
                ("lock_timeout", SESSION_LOCK_TIMEOUT),
                ("TimeZone", "UTC"),
            ):
                await connection.fetchval(sql.SET_CONFIG, setting, value, False)
            yield cls(connection, name)
        finally:
            await connection.close()

    # -- reporting ---------------------------------------------------------------

    def _done(self, step: str, started: float, *, exclusive: bool = False) -> float:
        seconds = time.perf_counter() - started
        self.report(f"[{self.name}] {step}{' (exclusive)' if exclusive else ''}: {seconds:.3f} s")
        return seconds

    # -- probes ------------------------------------------------------------------

    async def constraint(self, table: str, name: str) -> asyncpg.Record | None:
        """(validated, definition) of `table`'s constraint `name`, or None."""
        row: asyncpg.Record | None = await self.connection.fetchrow(
            sql.CONSTRAINT_STATE, table, name
        )
        return row

    async def index_valid(self, name: str, table: str) -> bool | None:
        """True (valid), False (INVALID: an interrupted build) or None (absent).
        An index of that name on another table is an error, not a build to skip."""
        row = await self.connection.fetchrow(sql.INDEX_STATE, name, table)
        if row is None:
            return None
        if not row["ours"]:
            raise RuntimeError(f"index {name} exists but is not an index of {table}")
        return bool(row["valid"])

    async def trigger_exists(self, table: str, name: str) -> bool:
        return bool(await self.connection.fetchval(sql.TRIGGER_EXISTS, table, name))

    # -- steps -------------------------------------------------------------------

    async def locked(
        self,
        step: str,
        *statements: LiteralString,
        work: Callable[[asyncpg.Connection], Awaitable[Any]] | None = None,
        lock_timeout: str = LOCK_TIMEOUT,
        attempts: int = LOCK_ATTEMPTS,
    ) -> None:
        """`statements` (then `work`, for steps that look at the catalog first) in
        one short transaction that waits at most `lock_timeout` for each lock; not
        granted (or a deadlock), it rolls back and is tried again, `attempts`
        times, backing off. Write the statements idempotent (IF [NOT] EXISTS)."""
        for attempt in range(1, attempts + 1):
            started = time.perf_counter()
            try:
                async with self.connection.transaction():
                    await self.connection.fetchval(
                        sql.SET_CONFIG, "lock_timeout", lock_timeout, True
                    )
                    for statement in statements:
                        await self.connection.execute(statement)
                    if work is not None:
                        await work(self.connection)
            except RETRIED_LOCK_ERRORS:
                if attempt == attempts:
                    raise
                self.report(f"[{self.name}] {step}: lock not granted, try {attempt + 1}")
                await asyncio.sleep(min(5.0, 0.2 * attempt))
                continue
            self._done(step, started, exclusive=True)
            return

    async def run(self, step: str, *statements: LiteralString) -> None:
        """Statements outside any transaction (each commits alone): what cannot
        run in one, e.g. ``DROP INDEX CONCURRENTLY IF EXISTS``, ``VACUUM``."""
        started = time.perf_counter()
        for statement in statements:
            await self.connection.execute(statement)
        self._done(step, started)

    async def build_index(self, name: str, table: str, create: LiteralString) -> None:
        """`create` (``CREATE [UNIQUE] INDEX CONCURRENTLY <name> ON <table> ...``)
        unless a valid index `name` exists; an INVALID one (an interrupted build)
        is dropped concurrently first."""
        valid = await self.index_valid(name, table)
        if valid:
            return
        started = time.perf_counter()
        if valid is False:
            await self.connection.execute(sql.drop_index_concurrently(name))
        try:
            await self.connection.execute(create)
        except asyncpg.UniqueViolationError as error:
            # The failed build leaves an INVALID index: drop it, say which rows.
            await self.connection.execute(sql.drop_index_concurrently(name))
            raise MigrationDataError(
                f"index {name}",
                f"duplicate keys on {table}: {error.detail or error}",
                [],
                "Remove the duplicates, then run the migration again.",
            ) from error
        self._done(f"index {name}", started)

    async def drop_index(self, name: str) -> None:
        started = time.perf_counter()
        await self.connection.execute(sql.drop_index_concurrently(name))
        self._done(f"drop index {name}", started)

    async def add_constraint(self, table: str, name: str, statement: LiteralString) -> None:
        """`statement` (``ALTER TABLE <table> ADD CONSTRAINT <name> ... NOT VALID``)
        as a :meth:`locked` step, unless `table` already has a constraint `name`."""

        async def add(connection: asyncpg.Connection) -> None:
            if await connection.fetchrow(sql.CONSTRAINT_STATE, table, name) is None:
                await connection.execute(statement)

        await self.locked(f"{table}: {name} NOT VALID", work=add)

    async def validate(
        self,
        table: str,
        name: str,
        *,
        offenders: LiteralString | None = None,
        advice: str = "Fix or delete these rows, then run the migration again; or step it back.",
    ) -> None:
        """VALIDATE `table`'s constraint `name` (a scan; reads and writes go on)
        unless it is validated already. If rows break it: MigrationDataError
        naming them (`offenders`: a SELECT of those rows, at most a few) and
        saying what to do (`advice`), the constraint left NOT VALID (it still
        holds for new rows)."""
        found = await self.constraint(table, name)
        if found is None:
            raise RuntimeError(f"{table} has no constraint {name} to validate")
        if found["validated"]:
            return
        started = time.perf_counter()
        try:
            await self.connection.execute(sql.validate_constraint(table, name))
        except DATA_ERRORS as error:
            rows = await self.connection.fetch(offenders) if offenders else []
            raise MigrationDataError(
                f"{table}: validate {name}",
                f"{error}{f' ({error.detail})' if getattr(error, 'detail', None) else ''}",
                rows,
                f"The constraint stays NOT VALID (new rows are checked). {advice}",
            ) from error
        self._done(f"{table}: validate {name}", started)

    async def backfill(
        self,
        step: str,
        batch: LiteralString,
        *,
        start: Any,
        rows: int = BATCH_ROWS,
        replica_role: bool = False,
    ) -> Backfilled:
        """Run `batch` until it reports no more rows, one transaction per batch.

        `batch` takes ``$1``, the last key of the previous batch (`start` for the
        first: below every key), and ``$2``, the batch size, and returns one row
        ``(last, done)``: the greatest key it looked at (NULL when there was none
        left) and how many rows it changed. It must only change rows that still
        need it (``WHERE new_column IS NULL``), so a killed run is run again from
        `start` and only skips through the rows done. For example::

            WITH batch AS (
                SELECT id FROM workflow_runs WHERE id > $1 ORDER BY id LIMIT $2
            ), changed AS (
                UPDATE workflow_runs r SET version_id = ...
                FROM batch WHERE r.id = batch.id AND r.version_id IS NULL
                RETURNING 1
            )
            SELECT (SELECT max(id) FROM batch) AS last, (SELECT count(*) FROM changed) AS done

        A batch that deadlocks with (or fails to serialize against) an app
        transaction is run again; one that fails on bad data is run again one row
        at a time to name the rows that stop it (MigrationDataError; the batches
        before it stay committed). `replica_role` (needs a superuser): the
        batches skip triggers, e.g. not to stamp ``updated_at`` on every row.
        """
        started = time.perf_counter()
        last, total, batches = start, 0, 0
        reported = started

        async def one(after: Any, size: int) -> asyncpg.Record:
            async with self.connection.transaction():
                if replica_role:
                    await self.connection.fetchval(
                        sql.SET_CONFIG, "session_replication_role", "replica", True
                    )
                row: asyncpg.Record | None = await self.connection.fetchrow(batch, after, size)
            if row is None:
                raise RuntimeError(f"{step}: the batch statement returned no row")
            return row

        while True:
            for attempt in range(1, BATCH_ATTEMPTS + 1):
                try:
                    row = await one(last, rows)
                    break
                except RETRIED_BATCH_ERRORS:
                    if attempt == BATCH_ATTEMPTS:
                        raise
                    await asyncio.sleep(min(2.0, 0.1 * attempt))
                except DATA_ERRORS as error:
                    raise await self._bad_rows(step, one, last, rows, error) from error
            if row["last"] is None:
                break
            last = row["last"]
            total += int(row["done"] or 0)
            batches += 1
            if time.perf_counter() - reported >= PROGRESS_SECONDS:
                reported = time.perf_counter()
                self.report(f"[{self.name}] {step}: {total} rows so far, at key {last}")
        seconds = self._done(f"{step} ({total} rows)", started)
        return Backfilled(total, batches, seconds)

    async def _bad_rows(
        self,
        step: str,
        one: Callable[[Any, int], Awaitable[asyncpg.Record]],
        after: Any,
        size: int,
        error: Exception,
    ) -> MigrationDataError:
        """The failed batch again, a row at a time: the keys of the rows that fail."""
        bad: list[dict[str, Any]] = []
        key = after
        for _ in range(size):
            try:
                row = await one(key, 1)
            except DATA_ERRORS as again:
                # The row after `key` fails: find its key without changing it.
                bad.append({"after_key": key, "error": str(again)})
                break
            if row["last"] is None:
                break
            key = row["last"]
        return MigrationDataError(
            step,
            f"{type(error).__name__}: {error}",
            [{"first_failing_row_after_key": b["after_key"], "error": b["error"]} for b in bad],
            "The batches before it are committed. Fix the row after that key (the "
            "next key in the batch's order), then run the migration again: it skips "
            "the rows done.",
        )


class StateOnlyConstraints(MigrationManager):
    """A MigrationManager whose ``add_constraint`` only records the constraint in
    Piccolo's migration state (what the drift check compares ``tables.py``
    against) and runs no SQL for it, either way.

    Piccolo's own step is ``ADD CONSTRAINT ... CHECK (...)``: validated at once,
    a scan of the table under ACCESS EXCLUSIVE. A migration using this class
    adds the constraint itself, NOT VALID, in its raw step
    (:meth:`OnlineMigration.add_constraint`), validates it in a later migration
    (:meth:`OnlineMigration.validate`), and drops it in its raw backwards step.
    ``_run_add_constraints`` is Piccolo's, not public API: tests/test_piccolo_contract.py
    pins it.
    """

    async def _run_add_constraints(self, backwards: bool = False) -> None:
        return None
