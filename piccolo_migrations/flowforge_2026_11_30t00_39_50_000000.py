"""Time partitions: ``outbox`` by day of ``created_at``, ``run_step_logs`` by month of
its run's ``created_at`` (issue 11; docs/decisions.md, decision 12).

Piccolo cannot say ``PARTITION BY``, so this migration is raw SQL with a tested
backwards step; the Table classes stay as they are (Piccolo queries, joins and
the admin work on a partitioned table unchanged) and the drift test stays empty.
The column ``run_step_logs.run_created_at`` comes from the Piccolo migration
before this one (nullable, instant); this one fills it and makes it NOT NULL.

Forwards, per table, in ONE transaction (all or nothing):
the table is renamed ``<table>_unpartitioned``; a partitioned table with the
same columns, defaults and CHECK constraints takes its name; partitions are
created for every period that has rows, plus the current one and a few ahead,
plus a DEFAULT partition (an insert outside the prepared range is never lost);
the rows are copied (step logs take their run's ``created_at``); the old table
is dropped; keys, indexes and triggers are created on the partitioned table
(PostgreSQL builds them on every partition and clones them to later ones).

Constraints redesigned because a unique constraint must include the partition key:

* ``outbox_pkey``: (id, created_at).
* ``run_step_logs_pkey``: (id, run_created_at).
* ``run_step_logs_run_step_attempt_key``: (run_id, step_position, attempt,
  run_created_at). Still exactly "one row per run + step + attempt": the new
  composite ``run_step_logs_run_id_fkey`` (run_id, run_created_at) ->
  workflow_runs (id, created_at) makes run_created_at a function of run_id, so a
  second row for the same run cannot carry another value. It needs
  ``workflow_runs_id_created_at_key`` UNIQUE (id, created_at), built CONCURRENTLY first.

The copy holds ACCESS EXCLUSIVE locks on outbox and run_step_logs while it runs
(measured on the 1M-run data set: see benchmarks/partitions.py and the README):
writes that log steps or record events wait for it. Deploy it in a quiet window.

Backwards converts both tables back to plain heap tables (rows copied back) with
their original keys, indexes and triggers.
"""

from __future__ import annotations

import datetime
from typing import Any

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Timestamptz
from piccolo.engine import engine_finder

ID = "2026-11-30T00:39:50:000000"
VERSION = "1.38.0"
DESCRIPTION = "time partitions: outbox by day, run_step_logs by month of the run"

TERMINAL = "('completed', 'failed', 'cancelled')"
DAYS_AHEAD = 7
MONTHS_AHEAD = 2

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

# The outbox's indexes (as the relay migration made them) and its key.
OUTBOX_INDEXES = [
    "CREATE INDEX outbox_claim_idx ON outbox (seq) "
    "WHERE published_at IS NULL AND dead_lettered_at IS NULL",
    "CREATE INDEX outbox_aggregate_unpublished_idx ON outbox "
    "(aggregate_type, aggregate_id, seq) WHERE published_at IS NULL",
    "CREATE INDEX outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL",
    "CREATE INDEX outbox_dead_lettered_idx ON outbox (dead_lettered_at) "
    "WHERE dead_lettered_at IS NOT NULL",
    UPDATED_AT_TRIGGER.format(table="outbox"),
    OUTBOX_NOTIFY_TRIGGER,
]

PARTITIONED_OUTBOX_KEYS = [
    "ALTER TABLE outbox ADD CONSTRAINT outbox_pkey PRIMARY KEY (id, created_at)",
    *OUTBOX_INDEXES,
]
PLAIN_OUTBOX_KEYS = [
    "ALTER TABLE outbox ADD CONSTRAINT outbox_pkey PRIMARY KEY (id)",
    *OUTBOX_INDEXES,
]

STEP_FK = (
    "ALTER TABLE run_step_logs ADD CONSTRAINT run_step_logs_step_id_fkey "
    "FOREIGN KEY (step_id) REFERENCES workflow_steps (id) ON UPDATE CASCADE ON DELETE SET NULL"
)
STEP_LOG_COMMON = [
    STEP_FK,
    "CREATE INDEX run_step_logs_step_id_idx ON run_step_logs (step_id) WHERE step_id IS NOT NULL",
    UPDATED_AT_TRIGGER.format(table="run_step_logs"),
]
PARTITIONED_STEP_LOG_KEYS = [
    "ALTER TABLE run_step_logs ADD CONSTRAINT run_step_logs_pkey PRIMARY KEY (id, run_created_at)",
    "ALTER TABLE run_step_logs ADD CONSTRAINT run_step_logs_run_step_attempt_key "
    "UNIQUE (run_id, step_position, attempt, run_created_at)",
    "ALTER TABLE run_step_logs ADD CONSTRAINT run_step_logs_run_id_fkey "
    "FOREIGN KEY (run_id, run_created_at) REFERENCES workflow_runs (id, created_at) "
    "ON UPDATE CASCADE ON DELETE CASCADE",
    *STEP_LOG_COMMON,
]
PLAIN_STEP_LOG_KEYS = [
    "ALTER TABLE run_step_logs ADD CONSTRAINT run_step_logs_pkey PRIMARY KEY (id)",
    "ALTER TABLE run_step_logs ADD CONSTRAINT run_step_logs_run_step_attempt_key "
    "UNIQUE (run_id, step_position, attempt)",
    "ALTER TABLE run_step_logs ADD CONSTRAINT run_step_logs_run_id_fkey "
    "FOREIGN KEY (run_id) REFERENCES workflow_runs (id) ON UPDATE CASCADE ON DELETE CASCADE",
    *STEP_LOG_COMMON,
]


def _day(moment: datetime.datetime) -> datetime.datetime:
    return datetime.datetime(moment.year, moment.month, moment.day, tzinfo=datetime.UTC)


def _month(moment: datetime.datetime, add: int = 0) -> datetime.datetime:
    index = moment.year * 12 + moment.month - 1 + add
    return datetime.datetime(index // 12, index % 12 + 1, 1, tzinfo=datetime.UTC)


async def _columns(connection: Any, table: str) -> list[str]:
    rows = await connection.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        table,
    )
    return [row["attname"] for row in rows]


async def _name_partition_indexes(connection: Any, table: str) -> None:
    """Name each partition's indexes <partition>_<suffix> after the table's
    <table>_<suffix> (PostgreSQL names them from the columns): flowforge.errors
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


async def _copy(connection: Any, target: str, source: str, select: str) -> None:
    expected = await connection.fetchval(f"SELECT count(*) FROM {source}")  # noqa: S608
    await connection.execute(select)
    copied = await connection.fetchval(f"SELECT count(*) FROM {target}")  # noqa: S608
    if copied != expected:
        raise RuntimeError(f"{target}: copied {copied} rows of {expected}; rolled back")


async def _outbox_forwards(connection: Any, now: datetime.datetime) -> None:
    await connection.execute("ALTER TABLE outbox RENAME TO outbox_unpartitioned")
    await connection.execute(
        "CREATE TABLE outbox (LIKE outbox_unpartitioned INCLUDING DEFAULTS "
        "INCLUDING CONSTRAINTS) PARTITION BY RANGE (created_at)"
    )
    days = {
        row["day"]
        for row in await connection.fetch(
            "SELECT DISTINCT date_trunc('day', created_at) AS day FROM outbox_unpartitioned"
        )
    }
    today = _day(now)
    days |= {today + datetime.timedelta(days=n) for n in range(-1, DAYS_AHEAD + 1)}
    for day in sorted(days):
        await connection.execute(
            f"CREATE TABLE outbox_p{day:%Y%m%d} PARTITION OF outbox "
            f"FOR VALUES FROM ('{day.isoformat()}') "
            f"TO ('{(day + datetime.timedelta(days=1)).isoformat()}')"
        )
    await connection.execute("CREATE TABLE outbox_default PARTITION OF outbox DEFAULT")
    await _copy(
        connection,
        "outbox",
        "outbox_unpartitioned",
        "INSERT INTO outbox SELECT * FROM outbox_unpartitioned",
    )
    await connection.execute("ALTER SEQUENCE outbox_seq_seq OWNED BY outbox.seq")
    await connection.execute("DROP TABLE outbox_unpartitioned")
    for statement in PARTITIONED_OUTBOX_KEYS:
        await connection.execute(statement)
    await _name_partition_indexes(connection, "outbox")


async def _step_logs_forwards(connection: Any, now: datetime.datetime) -> None:
    await connection.execute("ALTER TABLE run_step_logs RENAME TO run_step_logs_unpartitioned")
    await connection.execute(
        "CREATE TABLE run_step_logs (LIKE run_step_logs_unpartitioned INCLUDING DEFAULTS "
        "INCLUDING CONSTRAINTS) PARTITION BY RANGE (run_created_at)"
    )
    months = {
        row["month"]
        for row in await connection.fetch(
            "SELECT DISTINCT date_trunc('month', r.created_at) AS month "
            "FROM workflow_runs r WHERE EXISTS "
            "(SELECT 1 FROM run_step_logs_unpartitioned l WHERE l.run_id = r.id)"
        )
    }
    months |= {_month(now, n) for n in range(-1, MONTHS_AHEAD + 1)}
    for month in sorted(months):
        await connection.execute(
            f"CREATE TABLE run_step_logs_p{month:%Y%m} PARTITION OF run_step_logs "
            f"FOR VALUES FROM ('{month.isoformat()}') TO ('{_month(month, 1).isoformat()}')"
        )
    await connection.execute(
        "CREATE TABLE run_step_logs_default PARTITION OF run_step_logs DEFAULT"
    )
    columns = await _columns(connection, "run_step_logs_unpartitioned")
    values = ", ".join("r.created_at" if c == "run_created_at" else f"l.{c}" for c in columns)
    await _copy(
        connection,
        "run_step_logs",
        "run_step_logs_unpartitioned",
        f"INSERT INTO run_step_logs ({', '.join(columns)}) SELECT {values} "  # noqa: S608
        "FROM run_step_logs_unpartitioned l JOIN workflow_runs r ON r.id = l.run_id",
    )
    await connection.execute("DROP TABLE run_step_logs_unpartitioned")
    for statement in PARTITIONED_STEP_LOG_KEYS:
        await connection.execute(statement)
    await _name_partition_indexes(connection, "run_step_logs")


async def _back_to_plain(connection: Any, table: str, keys: list[str]) -> None:
    await connection.execute(f"ALTER TABLE {table} RENAME TO {table}_partitioned")
    await connection.execute(
        f"CREATE TABLE {table} (LIKE {table}_partitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )
    await _copy(
        connection,
        table,
        f"{table}_partitioned",
        f"INSERT INTO {table} SELECT * FROM {table}_partitioned",  # noqa: S608
    )
    if table == "outbox":
        await connection.execute("ALTER SEQUENCE outbox_seq_seq OWNED BY outbox.seq")
    await connection.execute(f"DROP TABLE {table}_partitioned")
    for statement in keys:
        await connection.execute(statement)


async def _connect() -> Any:
    engine = engine_finder()
    assert engine is not None
    connection = await engine.get_new_connection()
    # A migration is not a request: no statement timeout (the copy of a large
    # table takes minutes); a bounded wait for locks instead of queueing forever.
    await connection.execute("SET statement_timeout = 0")
    await connection.execute("SET lock_timeout = '30s'")
    await connection.execute("SET TimeZone = 'UTC'")
    return connection


async def run_forwards() -> None:
    connection = await _connect()
    try:
        # The target of the composite step-log foreign key, built without
        # blocking writers. A failed earlier try may have left it INVALID.
        await connection.execute(
            "DROP INDEX CONCURRENTLY IF EXISTS workflow_runs_id_created_at_key"
        )
        await connection.execute(
            "CREATE UNIQUE INDEX CONCURRENTLY workflow_runs_id_created_at_key "
            "ON workflow_runs (id, created_at)"
        )
        # A short lock of its own: workflow_runs must not stay locked for the copy.
        await connection.execute(
            "ALTER TABLE workflow_runs ADD CONSTRAINT workflow_runs_id_created_at_key "
            "UNIQUE USING INDEX workflow_runs_id_created_at_key"
        )
        async with connection.transaction():
            await connection.execute("LOCK TABLE outbox, run_step_logs IN ACCESS EXCLUSIVE MODE")
            now = await connection.fetchval("SELECT now()")
            await _outbox_forwards(connection, now)
            await _step_logs_forwards(connection, now)
        await connection.execute("ANALYZE outbox, run_step_logs")
    finally:
        await connection.close()


async def run_backwards() -> None:
    connection = await _connect()
    try:
        async with connection.transaction():
            await connection.execute("LOCK TABLE outbox, run_step_logs IN ACCESS EXCLUSIVE MODE")
            await _back_to_plain(connection, "outbox", PLAIN_OUTBOX_KEYS)
            await _back_to_plain(connection, "run_step_logs", PLAIN_STEP_LOG_KEYS)
            await connection.execute(
                "ALTER TABLE workflow_runs DROP CONSTRAINT workflow_runs_id_created_at_key"
            )
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
