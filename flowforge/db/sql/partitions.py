"""Partition maintenance's statements and DDL (flowforge.jobs.partitions).

The statements that read or move rows are constants per table: they name the
table and reach one partition through its key range. Only DDL names a
partition; its templates below are rendered by the functions next to them,
the partition's name (made from a date) through
:func:`~flowforge.db.sql.quote.quote_ident` and its bounds through
:func:`~flowforge.db.sql.quote.quote_literal` (DDL takes no bind parameters).
Every statement runs in a unit with :data:`UTC`, :data:`NO_STATEMENT_TIMEOUT`
and :func:`lock_timeout` (SET LOCAL: nothing outlives the transaction).
"""

from __future__ import annotations

import datetime
from typing import Final, LiteralString

from flowforge.db.sql.quote import quote_ident, quote_literal

NOW: Final[LiteralString] = "SELECT now()"

# Whether a table exists and is partitioned: a database a few migrations behind
# the code (run_history arrives with issue 17's) is maintained for what it has.
IS_PARTITIONED: Final[LiteralString] = (
    "SELECT coalesce((SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass($1)), false)"
)

# A table's partitions with their bounds. pg_get_expr is given the parent, so
# listing takes no lock on a partition (a busy one must not stall the listing).
PARTITIONS: Final[LiteralString] = """
SELECT c.relname AS name,
    (regexp_match(pg_get_expr(c.relpartbound, i.inhparent),
                  'FROM \\(''([^'']+)''\\) TO'))[1]::timestamptz AS lower,
    (regexp_match(pg_get_expr(c.relpartbound, i.inhparent),
                  'TO \\(''([^'']+)''\\)'))[1]::timestamptz AS upper
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = $1::regclass
ORDER BY lower NULLS LAST
"""

# A partition's indexes and the table indexes they belong to.
PARTITION_INDEXES: Final[LiteralString] = """
SELECT child.relname AS child, parent.relname AS parent, tbl.relname AS tbl
FROM pg_index cx
JOIN pg_class child ON child.oid = cx.indexrelid
JOIN pg_inherits i ON i.inhrelid = child.oid
JOIN pg_class parent ON parent.oid = i.inhparent
JOIN pg_index px ON px.indexrelid = parent.oid
JOIN pg_class tbl ON tbl.oid = px.indrelid
WHERE cx.indrelid = $1::regclass
"""

# The exact rows of the partition holding [$1, $2), read through the table (partition
# pruning scans only that partition); $1 is NULL for the legacy partition (MINVALUE).
EXACT_ROWS: Final[dict[str, LiteralString]] = {
    "outbox": (
        "SELECT count(*) FROM outbox "
        "WHERE created_at >= coalesce($1::timestamptz, '-infinity') AND created_at < $2"
    ),
    "run_step_logs": (
        "SELECT count(*) FROM run_step_logs "
        "WHERE run_created_at >= coalesce($1::timestamptz, '-infinity') AND run_created_at < $2"
    ),
    "run_history": (
        "SELECT count(*) FROM run_history "
        "WHERE run_created_at >= coalesce($1::timestamptz, '-infinity') AND run_created_at < $2"
    ),
}

# Per table: the periods whose rows wait in the default partition, how many
# there are, and moving one period's rows out of it into the table (with the
# default partition detached, the table routes them to the new partition).
STRAY_PERIODS: Final[dict[str, LiteralString]] = {
    "outbox": "SELECT DISTINCT date_trunc('day', created_at) FROM outbox_default",
    "run_step_logs": (
        "SELECT DISTINCT date_trunc('month', run_created_at) FROM run_step_logs_default"
    ),
    "run_history": "SELECT DISTINCT date_trunc('month', run_created_at) FROM run_history_default",
}

DEFAULT_ROWS: Final[dict[str, LiteralString]] = {
    "outbox": "SELECT count(*) FROM outbox_default",
    "run_step_logs": "SELECT count(*) FROM run_step_logs_default",
    "run_history": "SELECT count(*) FROM run_history_default",
}

DEFAULT_ROWS_IN_RANGE: Final[dict[str, LiteralString]] = {
    "outbox": "SELECT count(*) FROM outbox_default WHERE created_at >= $1 AND created_at < $2",
    "run_step_logs": (
        "SELECT count(*) FROM run_step_logs_default "
        "WHERE run_created_at >= $1 AND run_created_at < $2"
    ),
    "run_history": (
        "SELECT count(*) FROM run_history_default "
        "WHERE run_created_at >= $1 AND run_created_at < $2"
    ),
}

MOVE_FROM_DEFAULT: Final[dict[str, LiteralString]] = {
    "outbox": """
        WITH moved AS (
            DELETE FROM outbox_default WHERE created_at >= $1 AND created_at < $2 RETURNING *
        )
        INSERT INTO outbox SELECT * FROM moved
    """,
    "run_step_logs": """
        WITH moved AS (
            DELETE FROM run_step_logs_default
            WHERE run_created_at >= $1 AND run_created_at < $2 RETURNING *
        )
        INSERT INTO run_step_logs SELECT * FROM moved
    """,
    "run_history": """
        WITH moved AS (
            DELETE FROM run_history_default
            WHERE run_created_at >= $1 AND run_created_at < $2 RETURNING *
        )
        INSERT INTO run_history SELECT * FROM moved
    """,
}

# Around MOVE_FROM_DEFAULT (in the same transaction, so no other session ever
# sees it off): a step log moved out of the default partition is re-inserted,
# and its run_history trigger would record a creation that did not happen.
HISTORY_TRIGGER_OFF: Final[dict[str, LiteralString]] = {
    "run_step_logs": "ALTER TABLE run_step_logs DISABLE TRIGGER run_step_logs_history_created",
}
HISTORY_TRIGGER_ON: Final[dict[str, LiteralString]] = {
    "run_step_logs": "ALTER TABLE run_step_logs ENABLE TRIGGER run_step_logs_history_created",
}

# Every row of the partition holding [$2, $3) may be pruned (see the module docstring);
# $2 is NULL for the legacy partition (from MINVALUE).
ALL_EXPIRED: Final[dict[str, LiteralString]] = {
    "outbox": """
        SELECT NOT EXISTS (
                SELECT 1 FROM outbox
                WHERE created_at >= coalesce($2::timestamptz, '-infinity') AND created_at < $3
                    AND published_at IS NULL
            )
            AND coalesce((
                SELECT max(published_at) FROM outbox
                WHERE created_at >= coalesce($2::timestamptz, '-infinity') AND created_at < $3
            ), '-infinity') < $1
    """,
    "run_step_logs": """
        SELECT NOT EXISTS (
            SELECT 1 FROM workflow_runs r
            WHERE r.created_at >= coalesce($2::timestamptz, '-infinity') AND r.created_at < $3
                AND NOT (r.status IN ('completed', 'failed', 'cancelled')
                         AND r.finished_at < $1)
                AND EXISTS (SELECT 1 FROM run_step_logs l
                            WHERE l.run_id = r.id AND l.run_created_at = r.created_at)
        )
    """,
    # The same rule for a run's history, which is pruned with its run.
    "run_history": """
        SELECT NOT EXISTS (
            SELECT 1 FROM workflow_runs r
            WHERE r.created_at >= coalesce($2::timestamptz, '-infinity') AND r.created_at < $3
                AND NOT (r.status IN ('completed', 'failed', 'cancelled')
                         AND r.finished_at < $1)
                AND EXISTS (SELECT 1 FROM run_history h
                            WHERE h.run_id = r.id AND h.run_created_at = r.created_at)
        )
    """,
}


# -- a unit of work's settings -------------------------------------------------------------

UTC: Final[LiteralString] = "SET LOCAL TimeZone = 'UTC'"
NO_STATEMENT_TIMEOUT: Final[LiteralString] = "SET LOCAL statement_timeout = 0"
LOCK_TIMEOUT: Final[LiteralString] = "SET LOCAL lock_timeout = {milliseconds}"


def lock_timeout(milliseconds: int) -> str:
    """:data:`LOCK_TIMEOUT` for `milliseconds` (an int: nothing else reaches the text)."""
    return LOCK_TIMEOUT.format(milliseconds=int(milliseconds))


# -- DDL -----------------------------------------------------------------------------------

CREATE_PARTITION: Final[LiteralString] = (
    "CREATE TABLE {partition} PARTITION OF {table} FOR VALUES FROM ({lower}) TO ({upper})"
)
DETACH_PARTITION: Final[LiteralString] = "ALTER TABLE {table} DETACH PARTITION {partition}"
ATTACH_DEFAULT_PARTITION: Final[LiteralString] = (
    "ALTER TABLE {table} ATTACH PARTITION {partition} DEFAULT"
)
# No row can be written into the partition between the expiry check and the drop.
LOCK_PARTITION: Final[LiteralString] = "LOCK TABLE {partition} IN SHARE MODE"
DROP_PARTITION: Final[LiteralString] = "DROP TABLE {partition}"
RENAME_INDEX: Final[LiteralString] = "ALTER INDEX {index} RENAME TO {name}"


def create_partition(
    table: str, partition: str, lower: datetime.datetime, upper: datetime.datetime
) -> str:
    """:data:`CREATE_PARTITION`: `partition` of `table` for [`lower`, `upper`)."""
    return CREATE_PARTITION.format(
        partition=quote_ident(partition),
        table=quote_ident(table),
        lower=quote_literal(lower.isoformat()),
        upper=quote_literal(upper.isoformat()),
    )


def detach_partition(table: str, partition: str) -> str:
    return DETACH_PARTITION.format(table=quote_ident(table), partition=quote_ident(partition))


def attach_default_partition(table: str, partition: str) -> str:
    return ATTACH_DEFAULT_PARTITION.format(
        table=quote_ident(table), partition=quote_ident(partition)
    )


def lock_partition(partition: str) -> str:
    return LOCK_PARTITION.format(partition=quote_ident(partition))


def drop_partition(partition: str) -> str:
    return DROP_PARTITION.format(partition=quote_ident(partition))


def rename_index(index: str, name: str) -> str:
    return RENAME_INDEX.format(index=quote_ident(index), name=quote_ident(name))
