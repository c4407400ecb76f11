"""Time partitions: ``outbox`` by day of ``created_at``, ``run_step_logs`` by month of
its run's ``created_at`` (issue 11; docs/decisions/12-time-partitions.md). ONLINE: no
row is copied and no long exclusive lock is taken on a populated database.

Piccolo cannot say ``PARTITION BY``, so this migration is raw SQL with a tested
backwards step; the Table classes stay as they are (Piccolo queries, joins and
the admin work on a partitioned table unchanged) and the drift test stays empty.
The column ``run_step_logs.run_created_at`` comes from the Piccolo migration
before this one (nullable, instant); this one fills it and makes it NOT NULL.

The existing table becomes the first partition, ``<table>_legacy``, bounded
FROM (MINVALUE) TO (cutoff); new rows from the cutoff on go to normal partitions.
Forwards refuses at once (exit 2, one line) when a plain ``<table>_legacy`` that
is not a partition exists (one ``piccolo flowforge partitions --detach`` kept):
the swap needs that name and its indexes' names; drop or rename it first.
Forwards, per table (outbox first, then step logs), each step resumable:

1. step logs only: first a BEFORE INSERT OR UPDATE row trigger,
   ``run_step_logs_fill_run_created_at`` (function ``flowforge_fill_run_created_at``),
   gives a row written without ``run_created_at`` its run's ``created_at``: a
   writer that does not set it (a release older than migration
   2026-11-30T00:39:47, ad-hoc SQL) keeps working under the CHECK of step 2, for
   an INSERT and for an UPDATE of a row the backfill has not reached. Then
   ``run_created_at`` is backfilled from the run in batches of
   ``BACKFILL_ROWS`` rows by ctid range, each its own short transaction (no lock
   beyond the rows it updates; a batch that deadlocks with or fails to serialize
   against an app transaction is run again, up to ``BATCH_ATTEMPTS`` times). Run as
   a superuser (as ``migrate`` usually is) the fill sets
   ``session_replication_role = replica`` for its own transactions, so the
   ``updated_at`` trigger does not stamp every step log with the fill time;
   otherwise it does (the only column touched besides the key);
2. a CHECK ``<table>_legacy_range`` (key IS NOT NULL AND key < cutoff) is added
   NOT VALID (a catalog change), the rows the backfill has not reached yet (an
   interrupted run) are filled until none is left (rows written since get their
   key from the writer or the trigger), then the CHECK is VALIDATEd (a scan that
   blocks no read or write);
3. the unique indexes the partitioned keys need are built CONCURRENTLY on the
   table, under the names they keep as the legacy partition's indexes; for step
   logs the composite foreign key (run_id, run_created_at) -> workflow_runs (id,
   created_at) is added NOT VALID, then VALIDATEd;
4. one short transaction (``lock_timeout`` ``SWAP_LOCK_TIMEOUT``, retried up to
   ``SWAP_ATTEMPTS`` times): it first checks, by the database clock, that the
   cutoff is still more than ``SWAP_MARGIN`` ahead (see below); the old keys,
   foreign key and triggers (the fill trigger and its function too) go, the new
   keys are made USING the built indexes, the remaining indexes are renamed
   ``<table>_legacy_<suffix>``, the table is renamed ``<table>_legacy``, the
   partitioned table takes its name (same columns, defaults and CHECKs), with its
   partitions from the cutoff on plus a DEFAULT one, its keys, indexes, foreign
   keys and triggers (instant: its partitions are empty), and the legacy table is
   ATTACHed FOR VALUES FROM (MINVALUE) TO (cutoff). The validated CHECK proves the
   bound, so ATTACH scans nothing (nor does SET NOT NULL of run_created_at); the
   built indexes back the keys, so ATTACH adopts them and builds none; the
   validated foreign key is adopted, not validated again. On a fresh install the
   table is empty: it is dropped instead, and partitions cover the periods from
   yesterday on, as the maintenance command keeps them.

The cutoff leaves a margin: rows written between the CHECK and the swap must pass
it. For the outbox it is the start of the day after tomorrow (at least 24 h
ahead); for step logs the first month boundary after now + 2 days (a step log's
key is its run's creation time, which is about now for a new run). It is moved
later if existing rows reach past it (a clock ahead), and chosen again if a
resumed run finds the CHECK's cutoff less than a day ahead. Before each slow step
(VALIDATE, each index build, the foreign key) and inside the swap's transaction,
the cutoff must be more than ``SWAP_MARGIN`` (6 h) ahead by the database clock;
if not (a preparation that took the better part of a day), the swap rolls back
and the preparation runs again with a new cutoff (the stale CHECK dropped and
validated anew; built indexes are kept), up to ``PREPARE_ATTEMPTS`` times.

Writers after the swap: a BEFORE trigger cannot move a row to another partition,
so once the swap has happened every writer must set ``run_created_at`` (without
it a step log fails NOT NULL). Every FlowForge release that can run against this
schema does (it came with migration 2026-11-30T00:39:47); this concerns
hand-written writers only. Until the swap the fill trigger covers them.

Constraints redesigned because a unique constraint must include the partition key:

* ``outbox_pkey``: (id, created_at).
* ``run_step_logs_pkey``: (id, run_created_at).
* ``run_step_logs_run_step_attempt_key``: (run_id, step_position, attempt,
  run_created_at). Still exactly "one row per run + step + attempt": the new
  composite ``run_step_logs_run_id_fkey`` (run_id, run_created_at) ->
  workflow_runs (id, created_at) makes run_created_at a function of run_id, so a
  second row for the same run cannot carry another value. It needs
  ``workflow_runs_id_created_at_key`` UNIQUE (id, created_at), built CONCURRENTLY first.

Backwards, per table: with a legacy partition, the old unique indexes are built
CONCURRENTLY on it, then one short transaction detaches it, moves into it the
rows of the other partitions (what was written since forwards: that part is a
copy under the lock), drops the partitioned table, renames the legacy table
back, restores the old keys USING those indexes, the old foreign key NOT VALID
(VALIDATEd after the commit) and the triggers. Without a legacy partition (a fresh
install, or the legacy partition already retired by ``prune``) every row is copied
back into a plain table under ACCESS EXCLUSIVE, as the first version of this
migration did: fine for a fresh install; for a big database, a long lock. The fill
trigger and its function, if a forwards that did not reach the swap left them,
are dropped as well.

Every step prints how long it took (``exclusive`` marks a step that holds an
ACCESS EXCLUSIVE lock); ``benchmarks/partitions.py`` reads those lines.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Timestamptz
from piccolo.engine import engine_finder

from flowforge.db.online import MigrationDataError

ID = "2026-11-30T00:39:50:000000"
VERSION = "1.38.0"
DESCRIPTION = "time partitions: outbox by day, run_step_logs by month of the run (online)"

DAYS_AHEAD = 7
MONTHS_AHEAD = 2
BACKFILL_ROWS = 5000
# The swap's wait for its ACCESS EXCLUSIVE lock: every query on the table queues
# behind a waiting lock, so the wait is short and retried rather than long.
SWAP_LOCK_TIMEOUT = "1s"
SWAP_ATTEMPTS = 30
# Other catalog-only steps (ADD CONSTRAINT ... NOT VALID, USING INDEX).
SHORT_LOCK_TIMEOUT = "2s"
# What must be left of the margin when the swap commits (the database clock):
# less, and rows written from then on could miss the legacy partition's bound.
SWAP_MARGIN = datetime.timedelta(hours=6)
# Preparations (the CHECK with a new cutoff, validated again) before giving up.
PREPARE_ATTEMPTS = 3
# A backfill batch that deadlocks with, or fails to serialize against, an app
# transaction (which locks a run's step logs in another order) is run again.
BATCH_ATTEMPTS = 5

UPDATED_AT_TRIGGER = """
CREATE TRIGGER {table}_set_updated_at
BEFORE UPDATE ON {table}
FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*)
EXECUTE FUNCTION flowforge_set_updated_at()
"""

OUTBOX_NOTIFY_TRIGGER = """
CREATE TRIGGER outbox_notify
AFTER INSERT ON outbox
FOR EACH STATEMENT
EXECUTE FUNCTION flowforge_outbox_notify()
"""

# The outbox's indexes (as the relay migration made them) and its triggers.
OUTBOX_INDEXES = [
    "CREATE INDEX outbox_claim_idx ON outbox (seq) "
    "WHERE published_at IS NULL AND dead_lettered_at IS NULL",
    "CREATE INDEX outbox_aggregate_unpublished_idx ON outbox "
    "(aggregate_type, aggregate_id, seq) WHERE published_at IS NULL",
    "CREATE INDEX outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL",
    "CREATE INDEX outbox_dead_lettered_idx ON outbox (dead_lettered_at) "
    "WHERE dead_lettered_at IS NOT NULL",
]
OUTBOX_TRIGGERS = [UPDATED_AT_TRIGGER.format(table="outbox"), OUTBOX_NOTIFY_TRIGGER]

PARTITIONED_OUTBOX_KEYS = [
    "ALTER TABLE outbox ADD CONSTRAINT outbox_pkey PRIMARY KEY (id, created_at)",
    *OUTBOX_INDEXES,
    *OUTBOX_TRIGGERS,
]
PLAIN_OUTBOX_KEYS = [
    "ALTER TABLE outbox ADD CONSTRAINT outbox_pkey PRIMARY KEY (id)",
    *OUTBOX_INDEXES,
    *OUTBOX_TRIGGERS,
]

STEP_FK = (
    "ALTER TABLE run_step_logs ADD CONSTRAINT run_step_logs_step_id_fkey "
    "FOREIGN KEY (step_id) REFERENCES workflow_steps (id) ON UPDATE CASCADE ON DELETE SET NULL"
)
STEP_LOG_INDEX = (
    "CREATE INDEX run_step_logs_step_id_idx ON run_step_logs (step_id) WHERE step_id IS NOT NULL"
)
STEP_LOG_TRIGGERS = [UPDATED_AT_TRIGGER.format(table="run_step_logs")]
COMPOSITE_FK = (
    "FOREIGN KEY (run_id, run_created_at) REFERENCES workflow_runs (id, created_at) "
    "ON UPDATE CASCADE ON DELETE CASCADE"
)
PLAIN_FK = "FOREIGN KEY (run_id) REFERENCES workflow_runs (id) ON UPDATE CASCADE ON DELETE CASCADE"
PARTITIONED_STEP_LOG_KEYS = [
    "ALTER TABLE run_step_logs ADD CONSTRAINT run_step_logs_pkey PRIMARY KEY (id, run_created_at)",
    "ALTER TABLE run_step_logs ADD CONSTRAINT run_step_logs_run_step_attempt_key "
    "UNIQUE (run_id, step_position, attempt, run_created_at)",
    f"ALTER TABLE run_step_logs ADD CONSTRAINT run_step_logs_run_id_fkey {COMPOSITE_FK}",
    STEP_FK,
    STEP_LOG_INDEX,
    *STEP_LOG_TRIGGERS,
]
PLAIN_STEP_LOG_KEYS = [
    "ALTER TABLE run_step_logs ADD CONSTRAINT run_step_logs_pkey PRIMARY KEY (id)",
    "ALTER TABLE run_step_logs ADD CONSTRAINT run_step_logs_run_step_attempt_key "
    "UNIQUE (run_id, step_position, attempt)",
    f"ALTER TABLE run_step_logs ADD CONSTRAINT run_step_logs_run_id_fkey {PLAIN_FK}",
    STEP_FK,
    STEP_LOG_INDEX,
    *STEP_LOG_TRIGGERS,
]

# Until the swap, a step log written without run_created_at (a release older
# than migration 2026-11-30T00:39:47, ad-hoc SQL) gets its run's created_at, so
# it passes the range CHECK: inserted, or updated before the backfill reached it.
# Created before the backfill, dropped in the swap (and backwards). Its WHEN
# makes the column depend on it: stepping the column's migration back while it
# is there fails instead of leaving a trigger that breaks every write.
FILL_FUNCTION = "flowforge_fill_run_created_at"
FILL_TRIGGER = "run_step_logs_fill_run_created_at"
CREATE_FILL_FUNCTION = """
CREATE OR REPLACE FUNCTION flowforge_fill_run_created_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.run_created_at IS NULL THEN
        SELECT r.created_at INTO NEW.run_created_at FROM workflow_runs r WHERE r.id = NEW.run_id;
    END IF;
    RETURN NEW;
END
$$
"""
CREATE_FILL_TRIGGER = """
CREATE OR REPLACE TRIGGER run_step_logs_fill_run_created_at
BEFORE INSERT OR UPDATE ON run_step_logs
FOR EACH ROW WHEN (NEW.run_created_at IS NULL)
EXECUTE FUNCTION flowforge_fill_run_created_at()
"""
FILL_TRIGGER_EXISTS = """
SELECT EXISTS (
    SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass('run_step_logs') AND tgname = $1
)
"""

# Step logs whose key is missing: filled from their run, one ctid range at a time
# (a TID range scan: each batch reads only its pages).
BACKFILL_PAGES = """
UPDATE run_step_logs l SET run_created_at = r.created_at
FROM workflow_runs r
WHERE r.id = l.run_id AND l.run_created_at IS NULL
    AND l.ctid >= format('(%s,0)', $1::bigint)::tid AND l.ctid < format('(%s,0)', $2::bigint)::tid
"""
# What is still missing after that (rows written meanwhile): until none is left.
BACKFILL_REST = """
UPDATE run_step_logs l SET run_created_at = r.created_at
FROM workflow_runs r
WHERE r.id = l.run_id AND l.ctid = ANY(ARRAY(
    SELECT ctid FROM run_step_logs WHERE run_created_at IS NULL LIMIT $1
))
"""


# Rows that stop a VALIDATE, named in the error (flowforge.db.online.MigrationDataError).
SHOWN_ROWS = 10
OUT_OF_RANGE = {
    "outbox": "SELECT id, created_at FROM outbox "
    "WHERE created_at IS NULL OR created_at >= $2 ORDER BY id LIMIT $1",
    "run_step_logs": "SELECT id, run_id, run_created_at FROM run_step_logs "
    "WHERE run_created_at IS NULL OR run_created_at >= $2 ORDER BY id LIMIT $1",
}
KEY_NOT_THE_RUNS = """
SELECT l.id, l.run_id, l.run_created_at, r.created_at AS run_created
FROM run_step_logs l LEFT JOIN workflow_runs r ON r.id = l.run_id
WHERE l.run_created_at IS DISTINCT FROM r.created_at
ORDER BY l.id LIMIT $1
"""


@dataclass(frozen=True)
class Table:
    name: str
    key: str
    period: Literal["day", "month"]
    # The unique indexes the partitioned keys need: name -> columns. The first is the key.
    keys: tuple[tuple[str, str], ...]
    # The plain table's unique keys: constraint -> columns (backwards).
    plain_keys: tuple[tuple[str, str], ...]
    partitioned_keys: tuple[str, ...]
    plain_statements: tuple[str, ...]
    triggers: tuple[str, ...]

    @property
    def legacy(self) -> str:
        return f"{self.name}_legacy"

    @property
    def range_check(self) -> str:
        return f"{self.legacy}_range"


OUTBOX = Table(
    "outbox",
    "created_at",
    "day",
    keys=(("outbox_legacy_pkey", "id, created_at"),),
    plain_keys=(("outbox_pkey", "id"),),
    partitioned_keys=tuple(PARTITIONED_OUTBOX_KEYS),
    plain_statements=tuple(PLAIN_OUTBOX_KEYS),
    triggers=("outbox_set_updated_at", "outbox_notify"),
)
STEP_LOGS = Table(
    "run_step_logs",
    "run_created_at",
    "month",
    keys=(
        ("run_step_logs_legacy_pkey", "id, run_created_at"),
        (
            "run_step_logs_legacy_run_step_attempt_key",
            "run_id, step_position, attempt, run_created_at",
        ),
    ),
    plain_keys=(
        ("run_step_logs_pkey", "id"),
        ("run_step_logs_run_step_attempt_key", "run_id, step_position, attempt"),
    ),
    partitioned_keys=tuple(PARTITIONED_STEP_LOG_KEYS),
    plain_statements=tuple(PLAIN_STEP_LOG_KEYS),
    triggers=("run_step_logs_set_updated_at",),
)
TABLES = (OUTBOX, STEP_LOGS)
# The composite foreign key while the step-log table still has its old one.
NEW_FK = "run_step_logs_run_id_created_at_fkey"


def _report(step: str, started: float, *, exclusive: bool = False) -> None:
    seconds = time.perf_counter() - started
    lock = " (exclusive)" if exclusive else ""
    print(f"[partitioning] {step}{lock}: {seconds:.3f} s", flush=True)


def period_start(moment: datetime.datetime, period: str, add: int = 0) -> datetime.datetime:
    moment = moment.astimezone(datetime.UTC)
    if period == "day":
        day = datetime.datetime(moment.year, moment.month, moment.day, tzinfo=datetime.UTC)
        return day + datetime.timedelta(days=add)
    index = moment.year * 12 + moment.month - 1 + add
    return datetime.datetime(index // 12, index % 12 + 1, 1, tzinfo=datetime.UTC)


def partition_name(table: Table, start: datetime.datetime) -> str:
    return (
        f"{table.name}_p{start:%Y%m%d}" if table.period == "day" else f"{table.name}_p{start:%Y%m}"
    )


def minimum_cutoff(table: Table, now: datetime.datetime) -> datetime.datetime:
    """The earliest cutoff with its margin (see the module docstring)."""
    if table.period == "day":
        return period_start(now, "day", 2)
    return period_start(now + datetime.timedelta(days=2), "month", 1)


async def _relkind(connection: Any, name: str) -> str | None:
    kind = await connection.fetchval(
        "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)", name
    )
    return None if kind is None else str(kind)


async def _constraint(connection: Any, table: str, name: str) -> Any:
    return await connection.fetchrow(
        "SELECT convalidated, pg_get_constraintdef(oid) AS definition FROM pg_constraint "
        "WHERE conrelid = to_regclass($1) AND conname = $2",
        table,
        name,
    )


async def _short(
    connection: Any,
    step: str,
    work: Callable[[], Awaitable[Any]],
    *,
    lock_timeout: str = SHORT_LOCK_TIMEOUT,
    attempts: int = SWAP_ATTEMPTS,
) -> None:
    """One short transaction that takes an exclusive lock: bounded lock wait, retried."""
    for attempt in range(1, attempts + 1):
        started = time.perf_counter()
        try:
            async with connection.transaction():
                await connection.execute(f"SET LOCAL lock_timeout = '{lock_timeout}'")
                await work()
        except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
            if attempt == attempts:
                raise
            print(f"[partitioning] {step}: lock not granted, try {attempt + 1}", flush=True)
            await asyncio.sleep(min(5.0, 0.2 * attempt))
            continue
        _report(step, started, exclusive=True)
        return


async def _lock(connection: Any, table: Table, mode: str = "ACCESS EXCLUSIVE") -> None:
    """Lock the table; for step logs workflow_runs first, in the order writers
    take them (a run, then its logs), so a writer mid-transaction and this step
    cannot deadlock: dropping or adding the foreign key locks workflow_runs too
    (ACCESS EXCLUSIVE to drop one)."""
    tables = "workflow_runs, run_step_logs" if table is STEP_LOGS else table.name
    await connection.execute(f"LOCK TABLE {tables} IN {mode} MODE")


async def _index_concurrently(connection: Any, name: str, table: str, columns: str) -> None:
    """A unique index built without blocking writes; an INVALID one left by an
    interrupted build is dropped and built again. Only an index of `table` counts:
    one of that name on another table is an error, not a build to skip."""
    found = await connection.fetchrow(
        "SELECT indisvalid, indrelid = to_regclass($2) AS ours FROM pg_index "
        "WHERE indexrelid = to_regclass($1)",
        name,
        table,
    )
    if found is not None and not found["ours"]:
        raise RuntimeError(f"index {name} exists but is not an index of {table}: drop or rename it")
    valid = None if found is None else found["indisvalid"]
    if valid:
        return
    started = time.perf_counter()
    if valid is not None:
        await connection.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    await connection.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {name} ON {table} ({columns})")
    _report(f"index {name}", started)


async def _retried(step: str, work: Callable[[], Awaitable[int]]) -> int:
    """One backfill batch, its own transaction: a deadlock with (or a serialization
    failure against) an app transaction that locks a run's step logs in another
    order runs it again, a few times."""
    for attempt in range(1, BATCH_ATTEMPTS + 1):
        try:
            return await work()
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if attempt == BATCH_ATTEMPTS:
                raise
            print(f"[partitioning] {step}: conflict with a writer, try {attempt + 1}", flush=True)
            await asyncio.sleep(min(2.0, 0.1 * attempt))
    raise AssertionError("unreachable")


async def _install_fill_trigger(connection: Any) -> None:
    """The trigger that fills run_created_at for writers that leave it out (see
    FILL_FUNCTION), until the swap."""
    await connection.execute(CREATE_FILL_FUNCTION)
    if await connection.fetchval(FILL_TRIGGER_EXISTS, FILL_TRIGGER):
        return  # a resumed run: no lock taken again
    await _short(
        connection,
        "run_step_logs: fill trigger",
        lambda: connection.execute(CREATE_FILL_TRIGGER),
    )


async def _drop_fill_trigger(connection: Any) -> None:
    """The fill trigger and its function, in the caller's transaction (the swap,
    holding the table's lock) or in a short one of its own (_short). DROP TRIGGER
    locks the table even when there is none, hence the look first."""
    if await connection.fetchval(FILL_TRIGGER_EXISTS, FILL_TRIGGER):
        await connection.execute(f"DROP TRIGGER {FILL_TRIGGER} ON run_step_logs")
    await connection.execute(f"DROP FUNCTION IF EXISTS {FILL_FUNCTION}()")


async def _backfill(connection: Any) -> None:
    """run_step_logs.run_created_at from the run, in short batches."""
    started = time.perf_counter()
    superuser = await connection.fetchval(
        "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
    )
    stats = await connection.fetchrow(
        "SELECT pg_relation_size('run_step_logs') / current_setting('block_size')::bigint AS pages, "
        "greatest(reltuples, 0) AS tuples, greatest(relpages, 1) AS relpages "
        "FROM pg_class WHERE oid = 'run_step_logs'::regclass"
    )
    per_page = max(1.0, stats["tuples"] / stats["relpages"]) if stats["tuples"] else 50.0
    step = max(1, int(BACKFILL_ROWS / per_page))
    filled = 0

    async def batch(first: int) -> int:
        async with connection.transaction():
            if superuser:
                # No updated_at bump: the trigger is skipped for this fill only.
                await connection.execute("SET LOCAL session_replication_role = replica")
            result = await connection.execute(BACKFILL_PAGES, first, first + step)
        return int(result.split()[-1])

    for first in range(0, int(stats["pages"]), step):
        filled += await _retried(
            "backfill run_step_logs.run_created_at", functools.partial(batch, first)
        )
    _report(f"backfill run_step_logs.run_created_at ({filled} rows)", started)


async def _backfill_rest(connection: Any) -> None:
    started = time.perf_counter()
    superuser = await connection.fetchval(
        "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
    )
    filled = 0

    async def batch() -> int:
        async with connection.transaction():
            if superuser:
                await connection.execute("SET LOCAL session_replication_role = replica")
            return int((await connection.execute(BACKFILL_REST, BACKFILL_ROWS)).split()[-1])

    while True:
        done = await _retried("backfill the rest", batch)
        filled += done
        if not done:
            break
    _report(f"backfill the rest ({filled} rows)", started)


async def _cutoff(connection: Any, table: Table) -> datetime.datetime:
    """The legacy partition's upper bound, from its CHECK once that exists."""
    found = await _constraint(connection, table.name, table.range_check)
    now = await connection.fetchval("SELECT now()")
    if found is not None:
        cutoff = datetime.datetime.fromisoformat(
            re.findall(r"'([^']+)'", found["definition"])[0]
        ).astimezone(datetime.UTC)
        if cutoff > now + datetime.timedelta(days=1):
            return cutoff
        # A run resumed days later (or a preparation that outlasted the margin,
        # see _swap): the margin is gone, choose again.
        await _short(
            connection,
            f"{table.name}: drop a stale range check",
            lambda: connection.execute(
                f"ALTER TABLE {table.name} DROP CONSTRAINT {table.range_check}"
            ),
        )
    cutoff = minimum_cutoff(table, now)
    newest = await connection.fetchval(
        "SELECT max(created_at) FROM outbox"
        if table is OUTBOX
        else "SELECT max(created_at) FROM workflow_runs"
    )
    if newest is not None and newest >= cutoff:
        cutoff = period_start(newest, table.period, 1)
    await _short(
        connection,
        f"{table.name}: range check NOT VALID",
        lambda: connection.execute(
            f"ALTER TABLE {table.name} ADD CONSTRAINT {table.range_check} "
            f"CHECK ({table.key} IS NOT NULL AND {table.key} < '{cutoff.isoformat()}') NOT VALID"
        ),
    )
    return cutoff


class CutoffTooClose(Exception):
    """Less than SWAP_MARGIN left before the cutoff: prepare again."""


async def _ensure_margin(connection: Any, table: Table, cutoff: datetime.datetime) -> None:
    """Until the swap, a row dated from the cutoff on fails the range CHECK: the
    swap (and each slow step before it) must start well ahead of it, by the
    database clock. Otherwise CutoffTooClose: _forwards_table prepares again."""
    if await connection.fetchval(
        "SELECT clock_timestamp() >= $1::timestamptz", cutoff - SWAP_MARGIN
    ):
        raise CutoffTooClose(
            f"{table.name}: less than {SWAP_MARGIN} left before the cutoff {cutoff.isoformat()}"
        )


async def _add_new_fk(connection: Any) -> None:
    await _lock(connection, STEP_LOGS, "SHARE ROW EXCLUSIVE")
    await connection.execute(
        f"ALTER TABLE run_step_logs ADD CONSTRAINT {NEW_FK} {COMPOSITE_FK} NOT VALID"
    )


async def _prepare(connection: Any, table: Table) -> datetime.datetime:
    """Everything slow, none of it blocking reads or writes. Returns the cutoff."""
    if table is STEP_LOGS:
        await _install_fill_trigger(connection)
        if await _constraint(connection, table.name, table.range_check) is None:
            await _backfill(connection)
    cutoff = await _cutoff(connection, table)
    if table is STEP_LOGS:
        await _backfill_rest(connection)
    await _ensure_margin(connection, table, cutoff)
    started = time.perf_counter()
    await _validate(
        connection,
        table.name,
        table.range_check,
        OUT_OF_RANGE[table.name],
        cutoff,
        "rows whose partition key is missing or not before the legacy partition's bound "
        f"{cutoff.isoformat()}",
        "Fix or delete them (a key in the future: a clock or a writer was wrong), then "
        "run the migration again; or step back the migration before it.",
    )
    _report(f"{table.name}: validate the range check", started)
    for name, columns in table.keys:
        await _ensure_margin(connection, table, cutoff)
        await _index_concurrently(connection, name, table.name, columns)
    if table is STEP_LOGS:
        await _ensure_margin(connection, table, cutoff)
        if await _constraint(connection, table.name, NEW_FK) is None:
            await _short(
                connection,
                "run_step_logs: composite foreign key NOT VALID",
                lambda: _add_new_fk(connection),
            )
        started = time.perf_counter()
        await _validate(
            connection,
            "run_step_logs",
            NEW_FK,
            KEY_NOT_THE_RUNS,
            None,
            "step logs whose run_created_at is not their run's created_at",
            "Set it from the run (UPDATE run_step_logs l SET run_created_at = r.created_at "
            "FROM workflow_runs r WHERE r.id = l.run_id AND l.run_created_at <> r.created_at), "
            "then run the migration again; or step back the migration before it.",
        )
        _report("run_step_logs: validate the composite foreign key", started)
    return cutoff


async def _validate(
    connection: Any,
    table: str,
    constraint: str,
    offenders: str,
    cutoff: datetime.datetime | None,
    what: str,
    advice: str,
) -> None:
    """VALIDATE a constraint; rows that break it stop the migration with their
    keys named (at most SHOWN_ROWS). Everything done so far stays: forwards
    again after the rows are fixed, or backwards, each carries on from here."""
    try:
        await connection.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {constraint}")
    except (asyncpg.CheckViolationError, asyncpg.ForeignKeyViolationError) as error:
        args = (SHOWN_ROWS,) if cutoff is None else (SHOWN_ROWS, cutoff)
        rows = await connection.fetch(offenders, *args)
        raise MigrationDataError(
            f"{table}: validate {constraint}", f"{what}: {error}", rows, advice
        ) from None


async def _rename_indexes(connection: Any, relation: str, old: str, new: str) -> None:
    """Rename the indexes of `relation` named <old>_<suffix> to <new>_<suffix>
    (index names are schema-wide: the partitioned table needs the plain names)."""
    for row in await connection.fetch(
        "SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
        "WHERE x.indrelid = $1::regclass",
        relation,
    ):
        name = row["relname"]
        # Forwards (old is a prefix of new) an index already named new is left alone.
        if name.startswith(f"{old}_") and not (new.startswith(old) and name.startswith(f"{new}_")):
            await connection.execute(
                f'ALTER INDEX "{name}" RENAME TO "{new}_{name.removeprefix(old + "_")}"'
            )


async def _name_partition_indexes(connection: Any, table: str) -> None:
    """Name each partition's indexes <partition>_<suffix> after the table's
    <table>_<suffix> (PostgreSQL names them from the columns): flowforge.core.errors
    maps a unique violation reported on a partition back to the table's
    constraint, and a plan reads as the index it uses."""
    rows = await connection.fetch(
        """
        SELECT child.relname AS child, parent.relname AS parent, part.relname AS partition
        FROM pg_index x
        JOIN pg_class parent ON parent.oid = x.indexrelid
        JOIN pg_inherits i ON i.inhparent = parent.oid
        JOIN pg_class child ON child.oid = i.inhrelid
        JOIN pg_index cx ON cx.indexrelid = child.oid
        JOIN pg_class part ON part.oid = cx.indrelid
        WHERE x.indrelid = $1::regclass
        """,
        table,
    )
    for row in rows:
        wanted = f"{row['partition']}_{row['parent'].removeprefix(table + '_')}"
        if row["child"] != wanted:
            await connection.execute(f'ALTER INDEX "{row["child"]}" RENAME TO "{wanted}"')


async def _swap(connection: Any, table: Table, cutoff: datetime.datetime) -> None:
    """The catalog-only switch, in the caller's transaction (see the docstring, 4)."""
    name, legacy = table.name, table.legacy
    await _lock(connection, table)
    await _ensure_margin(connection, table, cutoff)
    empty = not await connection.fetchval(f"SELECT EXISTS (SELECT 1 FROM {name})")  # noqa: S608
    for trigger in table.triggers:
        await connection.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {name}")
    for constraint, _ in table.plain_keys:
        await connection.execute(f"ALTER TABLE {name} DROP CONSTRAINT {constraint}")
    if table is STEP_LOGS:
        # The partitioned table needs the key from the writer (a BEFORE trigger
        # cannot reroute a row): the fill ends here.
        await _drop_fill_trigger(connection)
        await connection.execute(
            "ALTER TABLE run_step_logs DROP CONSTRAINT run_step_logs_run_id_fkey"
        )
        await connection.execute(
            f"ALTER TABLE run_step_logs RENAME CONSTRAINT {NEW_FK} TO run_step_logs_run_id_fkey"
        )
    # The validated range check proves run_created_at NOT NULL: no scan.
    for index, _ in table.keys:
        kind = "PRIMARY KEY" if index.endswith("_pkey") else "UNIQUE"
        await connection.execute(
            f"ALTER TABLE {name} ADD CONSTRAINT {index} {kind} USING INDEX {index}"
        )
    await _rename_indexes(connection, name, name, legacy)
    await connection.execute(f"ALTER TABLE {name} RENAME TO {legacy}")

    await connection.execute(
        f"CREATE TABLE {name} (LIKE {legacy} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
        f"PARTITION BY RANGE ({table.key})"
    )
    await connection.execute(f"ALTER TABLE {name} DROP CONSTRAINT {table.range_check}")
    now = await connection.fetchval("SELECT now()")
    ahead = DAYS_AHEAD if table.period == "day" else MONTHS_AHEAD
    last = max(period_start(now, table.period, ahead), cutoff)
    start = period_start(now, table.period, -1) if empty else cutoff
    while start <= last:
        end = period_start(start, table.period, 1)
        await connection.execute(
            f"CREATE TABLE {partition_name(table, start)} PARTITION OF {name} "
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
        start = end
    await connection.execute(f"CREATE TABLE {name}_default PARTITION OF {name} DEFAULT")
    for statement in table.partitioned_keys:
        await connection.execute(statement)
    if table is OUTBOX:
        await connection.execute("ALTER SEQUENCE outbox_seq_seq OWNED BY outbox.seq")
    if empty:
        await connection.execute(f"DROP TABLE {legacy}")
    else:
        await connection.execute(
            f"ALTER TABLE {name} ATTACH PARTITION {legacy} "
            f"FOR VALUES FROM (MINVALUE) TO ('{cutoff.isoformat()}')"
        )
    await _name_partition_indexes(connection, name)


async def _forwards_table(connection: Any, table: Table) -> None:
    if await _relkind(connection, table.name) == "p":
        if table is STEP_LOGS:  # the swap dropped it; to be sure
            await _short(
                connection, "drop the fill trigger", lambda: _drop_fill_trigger(connection)
            )
        return  # done by an earlier run
    for attempt in range(1, PREPARE_ATTEMPTS + 1):
        try:
            cutoff = await _prepare(connection, table)
            await _short(
                connection,
                f"{table.name}: swap to partitioned",
                functools.partial(_swap, connection, table, cutoff),
                lock_timeout=SWAP_LOCK_TIMEOUT,
            )
            return
        except CutoffTooClose as error:
            if attempt == PREPARE_ATTEMPTS:
                raise
            # Rolled back; the next preparation finds the CHECK's cutoff less
            # than a day ahead, drops it and chooses a new one.
            print(f"[partitioning] {error}: prepare again", flush=True)


async def _refuse_a_stray_legacy_table(connection: Any) -> None:
    """A plain <table>_legacy that is not a partition (one `partitions --detach`
    kept) would take the name the swap gives the table: refused before any work."""
    for table in TABLES:
        if await _relkind(connection, table.name) == "p":
            continue
        stray = await connection.fetchval(
            "SELECT NOT relispartition FROM pg_class WHERE oid = to_regclass($1)", table.legacy
        )
        if stray:
            print(
                f"\n{table.legacy} exists as a plain table (a detached partition?): "
                f"drop or rename it, then run the migration again",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(2)


async def _plain_indexes_concurrently(connection: Any, table: Table) -> None:
    """The plain table's unique indexes, built on the legacy partition without
    blocking writes (a leaf partition allows CONCURRENTLY)."""
    for constraint, columns in table.plain_keys:
        await _index_concurrently(connection, f"{constraint}_plain", table.legacy, columns)


async def _swap_back(connection: Any, table: Table) -> None:
    name, legacy = table.name, table.legacy
    await _lock(connection, table)
    await connection.execute(f"ALTER TABLE {name} DETACH PARTITION {legacy}")
    await connection.execute(f"ALTER TABLE {legacy} DROP CONSTRAINT IF EXISTS {table.range_check}")
    # Rows written since forwards, in the other partitions: copied under the lock.
    moved = await connection.execute(f"INSERT INTO {legacy} SELECT * FROM {name}")  # noqa: S608
    print(f"[partitioning] {name}: moved {moved.split()[-1]} newer rows back", flush=True)
    if table is OUTBOX:
        await connection.execute(f"ALTER SEQUENCE outbox_seq_seq OWNED BY {legacy}.seq")
    await connection.execute(f"DROP TABLE {name}")
    await connection.execute(f"ALTER TABLE {legacy} RENAME TO {name}")
    for index, _ in table.keys:
        await connection.execute(f"ALTER TABLE {name} DROP CONSTRAINT {index}")
    await _rename_indexes(connection, name, legacy, name)
    for constraint, _ in table.plain_keys:
        kind = "PRIMARY KEY" if constraint.endswith("_pkey") else "UNIQUE"
        await connection.execute(
            f"ALTER TABLE {name} ADD CONSTRAINT {constraint} {kind} USING INDEX {constraint}_plain"
        )
    if table is STEP_LOGS:
        await connection.execute(
            "ALTER TABLE run_step_logs DROP CONSTRAINT run_step_logs_run_id_fkey"
        )
        await connection.execute(
            f"ALTER TABLE run_step_logs ADD CONSTRAINT run_step_logs_run_id_fkey {PLAIN_FK} NOT VALID"
        )
    for trigger in table.triggers:  # DETACH drops the cloned ones; to be sure
        await connection.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {name}")
    for statement in table.plain_statements:
        if statement.lstrip().startswith("CREATE TRIGGER"):
            await connection.execute(statement)


async def _copy_back(connection: Any, table: Table) -> None:
    """No legacy partition: every row is copied into a plain table (a fresh install)."""
    name = table.name
    await _lock(connection, table)
    await connection.execute(f"ALTER TABLE {name} RENAME TO {name}_partitioned")
    await connection.execute(
        f"CREATE TABLE {name} (LIKE {name}_partitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )
    expected = await connection.fetchval(f"SELECT count(*) FROM {name}_partitioned")  # noqa: S608
    await connection.execute(f"INSERT INTO {name} SELECT * FROM {name}_partitioned")  # noqa: S608
    copied = await connection.fetchval(f"SELECT count(*) FROM {name}")  # noqa: S608
    if copied != expected:
        raise RuntimeError(f"{name}: copied {copied} rows of {expected}; rolled back")
    if table is OUTBOX:
        await connection.execute("ALTER SEQUENCE outbox_seq_seq OWNED BY outbox.seq")
    await connection.execute(f"DROP TABLE {name}_partitioned")
    for statement in table.plain_statements:
        await connection.execute(statement)


async def _backwards_table(connection: Any, table: Table) -> None:
    if await _relkind(connection, table.name) != "p":
        return  # plain already (an earlier run got this far)
    attached = await connection.fetchval(
        "SELECT 1 FROM pg_inherits WHERE inhparent = $1::regclass AND inhrelid = to_regclass($2)",
        table.name,
        table.legacy,
    )
    if attached:
        await _plain_indexes_concurrently(connection, table)
        await _short(
            connection,
            f"{table.name}: swap back to plain",
            lambda: _swap_back(connection, table),
            lock_timeout=SWAP_LOCK_TIMEOUT,
        )
    else:
        await _short(
            connection,
            f"{table.name}: copy back to plain",
            lambda: _copy_back(connection, table),
            lock_timeout=SWAP_LOCK_TIMEOUT,
        )


async def _connect() -> Any:
    engine = engine_finder()
    assert engine is not None
    connection = await engine.get_new_connection()
    # A migration is not a request: no statement timeout (a backfill batch or a
    # concurrent index build on a large table takes long); the locks the slow
    # steps take block no read or write, and their wait is bounded anyway.
    await connection.execute("SET statement_timeout = 0")
    await connection.execute("SET lock_timeout = '30s'")
    await connection.execute("SET TimeZone = 'UTC'")
    return connection


async def run_forwards() -> None:
    connection = await _connect()
    try:
        await _refuse_a_stray_legacy_table(connection)
        # The target of the composite step-log foreign key, built without
        # blocking writers.
        await _index_concurrently(
            connection, "workflow_runs_id_created_at_key", "workflow_runs", "id, created_at"
        )
        if (
            await _constraint(connection, "workflow_runs", "workflow_runs_id_created_at_key")
            is None
        ):
            await _short(
                connection,
                "workflow_runs: (id, created_at) key USING INDEX",
                lambda: connection.execute(
                    "ALTER TABLE workflow_runs ADD CONSTRAINT workflow_runs_id_created_at_key "
                    "UNIQUE USING INDEX workflow_runs_id_created_at_key"
                ),
            )
        for table in TABLES:
            await _forwards_table(connection, table)
        await connection.execute("ANALYZE outbox, run_step_logs")
    finally:
        await connection.close()


async def _drop_leftovers(connection: Any, table: Table) -> None:
    """What a forwards that stopped before this table's swap (bad data, a killed
    process) left on the plain table: the range CHECK, the composite foreign
    key, the unique indexes built for the partitioned keys (valid or INVALID).
    Each looked up first: nothing to drop, no lock taken."""
    if await _relkind(connection, table.name) != "r":
        return
    if await _constraint(connection, table.name, table.range_check) is not None:
        await _short(
            connection,
            f"{table.name}: drop the range check",
            lambda: connection.execute(
                f"ALTER TABLE {table.name} DROP CONSTRAINT IF EXISTS {table.range_check}"
            ),
        )
    if table is STEP_LOGS and await _constraint(connection, table.name, NEW_FK) is not None:

        async def drop_new_fk() -> None:
            await _lock(connection, STEP_LOGS)
            await connection.execute(
                f"ALTER TABLE run_step_logs DROP CONSTRAINT IF EXISTS {NEW_FK}"
            )

        await _short(connection, "run_step_logs: drop the composite foreign key", drop_new_fk)
    for index, _ in table.keys:
        if await _index_of(connection, index, table.name):
            started = time.perf_counter()
            await connection.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")
            _report(f"drop index {index}", started)


async def _index_of(connection: Any, index: str, table: str) -> bool:
    return bool(
        await connection.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_index "
            "WHERE indexrelid = to_regclass($1) AND indrelid = to_regclass($2))",
            index,
            table,
        )
    )


async def run_backwards() -> None:
    """This migration stepped back; also what a forwards that stopped part-way
    left (the migration before this one calls it when it is stepped back: a
    failed forwards is not recorded, so Piccolo never runs this one's backwards)."""
    connection = await _connect()
    try:
        for table in TABLES:
            await _backwards_table(connection, table)
            await _drop_leftovers(connection, table)
        # Left by a forwards that did not reach the swap.
        await _short(connection, "drop the fill trigger", lambda: _drop_fill_trigger(connection))
        if await _constraint(connection, "workflow_runs", "workflow_runs_id_created_at_key"):
            await _short(
                connection,
                "workflow_runs: drop the (id, created_at) key",
                lambda: connection.execute(
                    "ALTER TABLE workflow_runs DROP CONSTRAINT workflow_runs_id_created_at_key"
                ),
            )
        if await _index_of(connection, "workflow_runs_id_created_at_key", "workflow_runs"):
            # Built, not yet a constraint (forwards stopped in between).
            started = time.perf_counter()
            await connection.execute(
                "DROP INDEX CONCURRENTLY IF EXISTS workflow_runs_id_created_at_key"
            )
            _report("drop index workflow_runs_id_created_at_key", started)
        found = await _constraint(connection, "run_step_logs", "run_step_logs_run_id_fkey")
        if found is not None and not found["convalidated"]:
            started = time.perf_counter()
            await connection.execute(
                "ALTER TABLE run_step_logs VALIDATE CONSTRAINT run_step_logs_run_id_fkey"
            )
            _report("run_step_logs: validate the foreign key", started)
        await connection.execute("ANALYZE outbox, run_step_logs")
    finally:
        await connection.close()


async def forwards() -> MigrationManager:
    manager = MigrationManager(
        migration_id=ID,
        app_name="flowforge",
        description=DESCRIPTION,
        wrap_in_transaction=False,
    )
    manager.add_raw(run_forwards)
    manager.add_raw_backwards(run_backwards)
    # For Piccolo's schema snapshot (the drift test) and its reversal. Raw steps
    # run first in both directions, so forwards this finds the column already
    # NOT NULL (it is in the partitioned table's primary key), and backwards it
    # drops NOT NULL after the table is a plain one again (a primary-key column
    # of the partitioned table could not).
    manager.alter_column(
        table_class_name="RunStepLog",
        tablename="run_step_logs",
        column_name="run_created_at",
        db_column_name="run_created_at",
        params={"null": False},
        old_params={"null": True},
        column_class=Timestamptz,
        old_column_class=Timestamptz,
        schema=None,
    )
    return manager
