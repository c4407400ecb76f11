"""run_history partitioned by month, and the triggers that write it (issue 17).

Replaces the plain ``run_history`` of the previous migration (empty on the way
forwards; holding the rows a step backwards copied into it otherwise) by the
table partitioned by month of ``run_created_at``, like ``run_step_logs``:
primary key (id, run_created_at), the run foreign key (run_id, run_created_at)
ON DELETE CASCADE, the keyset index of one run's history, one partition per
month that ``run_step_logs`` has a partition for (the legacy range included, as
``run_history_legacy``), a DEFAULT partition, and then:

* ``flowforge_run_history_of_run()``: AFTER INSERT, and AFTER UPDATE OF status
  WHEN the status changed, on ``workflow_runs``;
* ``flowforge_run_history_of_attempt()``: the same on ``run_step_logs``;
* ``flowforge_run_history_guard()``: BEFORE UPDATE OR DELETE on ``run_history``:
  a history row is never changed, and is deleted only with its run (the
  foreign key's cascade, once the run row is gone); retention drops whole
  partitions, which no row trigger sees.

See docs/decisions/14-run-history.md. No history is reconstructed for the runs
that exist before this migration: their history starts here.

Locks: dropping the table with the foreign key takes ACCESS EXCLUSIVE on
``workflow_runs``, CREATE TRIGGER takes SHARE ROW EXCLUSIVE on it and on
``run_step_logs``, which queues every request on runs behind it. Everything is
done in one short transaction that takes those locks first, at full strength
(no upgrade: no deadlock with a writer) with ``lock_timeout`` = LOCK_TIMEOUT (a long transaction on
runs makes the attempt fail fast instead of stalling writers behind it) and is
retried up to ATTEMPTS times. On PostgreSQL < 18 a foreign key on a partitioned
table cannot be added NOT VALID: rows copied back (after a step backwards) are
checked under that lock, in proportion to the history held; on the way
forwards from the previous migration the table is empty and it is instant.

Backwards (one transaction, same lock rules): drops the triggers and functions
and turns the table back into a plain one, copying its rows, so that a step
backwards and forwards again loses no row.
"""

from __future__ import annotations

import asyncio
from typing import Any

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-07T19:14:40:000000"
VERSION = "1.38.0"
DESCRIPTION = "run_history partitioned by month; the triggers that write it"

LOCK_TIMEOUT = "500ms"
ATTEMPTS = 20

# Who made a change: the transaction's flowforge.actor (set_config(..., true) by
# the application: api_key:<id>, reaper, cli:<command>), else the database user.
# nullif: a custom setting once set in a session reads '' after its transaction.
ACTOR = "coalesce(nullif(current_setting('flowforge.actor', true), ''), 'sql:' || session_user)"

FUNCTIONS = [
    f"""
CREATE OR REPLACE FUNCTION flowforge_run_history_of_run() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO run_history (run_id, run_created_at, from_status, to_status, reason, actor,
                             recorded_at)
    VALUES (NEW.id, NEW.created_at,
            CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.status,
            CASE WHEN NEW.status IN ('failed', 'cancelled') THEN NEW.error END,
            {ACTOR}, clock_timestamp());
    RETURN NULL;
END
$$
""",  # noqa: S608 - a constant expression
    f"""
CREATE OR REPLACE FUNCTION flowforge_run_history_of_attempt() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO run_history (run_id, run_created_at, step_log_id, step_position, attempt,
                             from_status, to_status, reason, actor, recorded_at)
    VALUES (NEW.run_id, NEW.run_created_at, NEW.id, NEW.step_position, NEW.attempt,
            CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.status, NEW.error,
            {ACTOR}, clock_timestamp());
    RETURN NULL;
END
$$
""",  # noqa: S608 - a constant expression
    # Append-only. A DELETE passes only once the run is gone: the foreign key's
    # ON DELETE CASCADE (run retention's batched DELETE) deletes the run first.
    """
CREATE OR REPLACE FUNCTION flowforge_run_history_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND NOT EXISTS (
        SELECT 1 FROM workflow_runs WHERE id = OLD.run_id AND created_at = OLD.run_created_at
    ) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'run history is append-only: % of a history row refused', TG_OP
        USING ERRCODE = 'restrict_violation', CONSTRAINT = 'run_history_append_only',
              HINT = 'History rows leave with their run (delete the run, or let retention prune it).';
END
$$
""",
]

TRIGGERS = [
    "CREATE TRIGGER workflow_runs_history_created AFTER INSERT ON workflow_runs "
    "FOR EACH ROW EXECUTE FUNCTION flowforge_run_history_of_run()",
    "CREATE TRIGGER workflow_runs_history_status AFTER UPDATE OF status ON workflow_runs "
    "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) "
    "EXECUTE FUNCTION flowforge_run_history_of_run()",
    "CREATE TRIGGER run_step_logs_history_created AFTER INSERT ON run_step_logs "
    "FOR EACH ROW EXECUTE FUNCTION flowforge_run_history_of_attempt()",
    "CREATE TRIGGER run_step_logs_history_status AFTER UPDATE OF status ON run_step_logs "
    "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) "
    "EXECUTE FUNCTION flowforge_run_history_of_attempt()",
    "CREATE TRIGGER run_history_append_only BEFORE UPDATE OR DELETE ON run_history "
    "FOR EACH ROW EXECUTE FUNCTION flowforge_run_history_guard()",
]

DROP_TRIGGERS = [
    "DROP TRIGGER IF EXISTS workflow_runs_history_created ON workflow_runs",
    "DROP TRIGGER IF EXISTS workflow_runs_history_status ON workflow_runs",
    "DROP TRIGGER IF EXISTS run_step_logs_history_created ON run_step_logs",
    "DROP TRIGGER IF EXISTS run_step_logs_history_status ON run_step_logs",
    "DROP TRIGGER IF EXISTS run_history_append_only ON run_history",
    "DROP FUNCTION IF EXISTS flowforge_run_history_of_run()",
    "DROP FUNCTION IF EXISTS flowforge_run_history_of_attempt()",
    "DROP FUNCTION IF EXISTS flowforge_run_history_guard()",
]

# run_step_logs' partitions with their bounds (NULL lower: MINVALUE, NULL upper: DEFAULT).
STEP_LOG_PARTITIONS = """
SELECT c.relname AS name,
    (regexp_match(pg_get_expr(c.relpartbound, i.inhparent),
                  'FROM \\(''([^'']+)''\\) TO'))[1] AS lower,
    (regexp_match(pg_get_expr(c.relpartbound, i.inhparent),
                  'TO \\(''([^'']+)''\\)'))[1] AS upper
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'run_step_logs'::regclass
"""

# Every lock the transaction will need, taken first, at full strength, in the
# order writers take them (runs, then step logs): dropping the table that holds
# a foreign key to workflow_runs (the plain run_history going, or the
# partitioned one on the way back) takes ACCESS EXCLUSIVE on workflow_runs. Taken
# late, that was a lock upgrade: the migration benchmark at 1M runs saw it
# deadlock with a writer that had read a run and then wrote one.
LOCK = (
    "LOCK TABLE workflow_runs IN ACCESS EXCLUSIVE MODE; "
    "LOCK TABLE run_step_logs IN SHARE ROW EXCLUSIVE MODE"
)
# Not granted within LOCK_TIMEOUT, or a deadlock: the transaction rolled back whole.
RETRIED = {"55P03", "40P01"}


async def _in_short_transactions(work: Any) -> None:
    """`work(connection)` in a transaction with a short lock timeout, retried."""
    engine = engine_finder()
    assert engine is not None
    connection = await engine.get_new_connection()
    try:
        await connection.execute("SET statement_timeout = 0")
        await connection.execute("SET TimeZone = 'UTC'")
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with connection.transaction():
                    await connection.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                    await work(connection)
                return
            except Exception as error:
                if getattr(error, "sqlstate", None) not in RETRIED or attempt == ATTEMPTS:
                    raise
                print(
                    f"[run_history] locks not granted ({error}); attempt {attempt + 1}", flush=True
                )
                await asyncio.sleep(min(0.2 * attempt, 2.0))
    finally:
        await connection.close()


async def _relkind(connection: Any, name: str) -> str | None:
    return await connection.fetchval(
        "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)", name
    )


async def _name_partition_indexes(connection: Any) -> None:
    """Each partition's indexes named <partition>_<suffix> after run_history_<suffix>
    (as flowforge.jobs.partitions names them)."""
    rows = await connection.fetch(
        """
        SELECT child.relname AS child, parent.relname AS parent, part.relname AS partition
        FROM pg_index x
        JOIN pg_class parent ON parent.oid = x.indexrelid
        JOIN pg_inherits i ON i.inhparent = parent.oid
        JOIN pg_class child ON child.oid = i.inhrelid
        JOIN pg_index cx ON cx.indexrelid = child.oid
        JOIN pg_class part ON part.oid = cx.indrelid
        WHERE x.indrelid = 'run_history'::regclass
        """
    )
    for row in rows:
        wanted = f"{row['partition']}_{row['parent'].removeprefix('run_history_')}"
        if row["child"] != wanted:
            await connection.execute(f'ALTER INDEX "{row["child"]}" RENAME TO "{wanted}"')


async def _forwards(connection: Any) -> None:
    await connection.execute(LOCK)
    if await _relkind(connection, "run_history") != "p":
        await connection.execute("ALTER TABLE run_history RENAME TO run_history_plain")
        await connection.execute("ALTER INDEX run_history_pkey RENAME TO run_history_plain_pkey")
        await connection.execute(
            "CREATE TABLE run_history "
            "(LIKE run_history_plain INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
            "PARTITION BY RANGE (run_created_at)"
        )
        await connection.execute(
            "ALTER TABLE run_history ADD CONSTRAINT run_history_pkey "
            "PRIMARY KEY (id, run_created_at)"
        )
        await connection.execute(
            "ALTER TABLE run_history ADD CONSTRAINT run_history_run_id_fkey "
            "FOREIGN KEY (run_id, run_created_at) REFERENCES workflow_runs (id, created_at) "
            "ON DELETE CASCADE"
        )
        # One run's history in order, for keyset pages (and the cascade's lookup).
        await connection.execute(
            "CREATE INDEX run_history_run_id_recorded_at_idx "
            "ON run_history (run_id, recorded_at, id)"
        )
        for row in await connection.fetch(STEP_LOG_PARTITIONS):
            suffix = row["name"].removeprefix("run_step_logs_")
            name = f"run_history_{suffix}"
            if row["upper"] is None:
                bounds = "DEFAULT"
            else:
                lower = "MINVALUE" if row["lower"] is None else f"'{row['lower']}'"
                bounds = f"FOR VALUES FROM ({lower}) TO ('{row['upper']}')"
            await connection.execute(f'CREATE TABLE "{name}" PARTITION OF run_history {bounds}')
        await _name_partition_indexes(connection)
        await connection.execute("INSERT INTO run_history SELECT * FROM run_history_plain")
        await connection.execute("DROP TABLE run_history_plain")
    for statement in DROP_TRIGGERS:
        await connection.execute(statement)
    for statement in [*FUNCTIONS, *TRIGGERS]:
        await connection.execute(statement)


async def _backwards(connection: Any) -> None:
    await connection.execute(LOCK)
    for statement in DROP_TRIGGERS:
        await connection.execute(statement)
    if await _relkind(connection, "run_history") != "p":
        return
    await connection.execute("ALTER TABLE run_history RENAME TO run_history_partitioned")
    await connection.execute("ALTER INDEX run_history_pkey RENAME TO run_history_partitioned_pkey")
    await connection.execute(
        "CREATE TABLE run_history "
        "(LIKE run_history_partitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )
    await connection.execute(
        "ALTER TABLE run_history ADD CONSTRAINT run_history_pkey PRIMARY KEY (id)"
    )
    await connection.execute("INSERT INTO run_history SELECT * FROM run_history_partitioned")
    await connection.execute("DROP TABLE run_history_partitioned")
    # As the previous migration made it (Piccolo's ForeignKey).
    await connection.execute(
        "ALTER TABLE run_history ADD CONSTRAINT run_history_run_id_fkey "
        "FOREIGN KEY (run_id) REFERENCES workflow_runs (id) ON DELETE CASCADE ON UPDATE CASCADE"
    )


async def forwards() -> MigrationManager:
    manager = MigrationManager(
        migration_id=ID,
        app_name="flowforge",
        description=DESCRIPTION,
        wrap_in_transaction=False,
    )

    async def run() -> None:
        await _in_short_transactions(_forwards)

    async def run_backwards() -> None:
        await _in_short_transactions(_backwards)

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
