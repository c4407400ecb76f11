"""Time partitions of ``outbox``, ``run_step_logs`` and ``run_history``: prepare ahead, retire when expired.

``piccolo flowforge partitions`` (and the relay's housekeeping, before each
prune) runs :func:`maintain`; ``piccolo flowforge prune`` uses
:func:`drop_expired` before its batched DELETEs. See docs/decisions/12-time-partitions.md.

* ``outbox``: one partition per UTC day of ``created_at`` (``outbox_pYYYYMMDD``),
  prepared ``PARTITION_DAYS_AHEAD`` days ahead. Retention is 7 days: daily
  partitions keep at most a day more than the setting.
* ``run_step_logs``: one partition per UTC month of the run's ``created_at``
  (``run_step_logs_pYYYYMM``), prepared ``PARTITION_MONTHS_AHEAD`` months ahead.
  Runs are kept 90 days; a month is a few partitions live, and a run's step
  logs never straddle two partitions.
* ``run_history``: the same months as ``run_step_logs`` (``run_history_pYYYYMM``),
  retired by the same rule: a run's history is pruned with the run.
* Each also has a DEFAULT partition: a row outside the prepared range (a clock
  far ahead, an imported old row) is stored there, never refused or lost. When a
  partition is created for a range that has rows in the default partition, they
  are moved into it in the same transaction.

A database converted while it held rows (the online migration, docs/decisions/12-time-partitions.md)
also has ``<table>_legacy``: the table as it was, attached FOR VALUES FROM
(MINVALUE) TO (the migration's cutoff). No partition is created for a period it
covers; it is retired like any other partition, by the same rule, once its upper
bound is past the retention and every row in it qualifies (until then the
batched DELETE prunes its rows).

Dropping a partition is all or nothing, so only a partition whose *every* row
qualifies for pruning is dropped: for the outbox, no event unpublished or
dead-lettered and the newest ``published_at`` older than the retention; for step
logs (and history), every run created in its month that has step logs (history)
is finished (completed, failed, cancelled) before the run retention. Everything else is left to the
batched DELETE in ``flowforge.jobs.retention``. The check runs under a SHARE lock on
the partition, so no row can be written into it between the check and the drop.

DDL takes short ACCESS EXCLUSIVE locks on the parent table; every statement here
runs with ``lock_timeout`` (``PARTITION_LOCK_TIMEOUT_MS``): a partition that
cannot be locked in time is skipped and reported, and the next run tries again.

The statements that read or move rows are constants per table (they name the
table and reach one partition through its key range); only DDL names a
partition, and partition names are made here from dates. The statements and
the DDL templates are in :mod:`flowforge.db.sql.partitions`.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final, Literal

import asyncpg

from flowforge.core.errors import PARTITION_NAME
from flowforge.core.logs import get_logger
from flowforge.db.engine import DB
from flowforge.db.sql import partitions as sql
from flowforge.db.sql.partitions import (
    ALL_EXPIRED,
    DEFAULT_ROWS,
    DEFAULT_ROWS_IN_RANGE,
    EXACT_ROWS,
    IS_PARTITIONED,
    MOVE_FROM_DEFAULT,
    NOW,
    PARTITION_INDEXES,
    PARTITIONS,
    STRAY_PERIODS,
)

__all__ = ["PARTITION_NAME", "SPECS", "drop_expired", "ensure", "maintain"]

logger = get_logger("flowforge.jobs.partitions")

PARTITION_DAYS_AHEAD: Final = 7
PARTITION_MONTHS_AHEAD: Final = 2
PARTITION_LOCK_TIMEOUT_MS: Final = 2000

Period = Literal["day", "month"]


@dataclass(frozen=True)
class Spec:
    table: str
    key: str
    period: Period


OUTBOX: Final = Spec("outbox", "created_at", "day")
STEP_LOGS: Final = Spec("run_step_logs", "run_created_at", "month")
# Partitioned like the step logs (by the run's month), retired by the same rule:
# a run's history goes with it.
HISTORY: Final = Spec("run_history", "run_created_at", "month")
SPECS: Final = (OUTBOX, STEP_LOGS, HISTORY)


def period_start(moment: datetime.datetime, period: Period, add: int = 0) -> datetime.datetime:
    """The UTC day or month containing `moment`, moved `add` periods on."""
    moment = moment.astimezone(datetime.UTC)
    if period == "day":
        day = datetime.datetime(moment.year, moment.month, moment.day, tzinfo=datetime.UTC)
        return day + datetime.timedelta(days=add)
    index = moment.year * 12 + moment.month - 1 + add
    return datetime.datetime(index // 12, index % 12 + 1, 1, tzinfo=datetime.UTC)


def partition_name(spec: Spec, start: datetime.datetime) -> str:
    return (
        f"{spec.table}_p{start:%Y%m%d}" if spec.period == "day" else f"{spec.table}_p{start:%Y%m}"
    )


@dataclass(frozen=True)
class Partition:
    name: str
    lower: datetime.datetime | None  # None: MINVALUE (the legacy partition), or DEFAULT
    upper: datetime.datetime | None  # None: the DEFAULT partition

    def covers(self, start: datetime.datetime) -> bool:
        """Whether the period starting at `start` lies in this partition's range
        (periods never straddle a bound: bounds are period starts)."""
        if self.upper is None:
            return False
        return (self.lower is None or self.lower <= start) and start < self.upper


@contextlib.asynccontextmanager
async def _unit() -> AsyncIterator[None]:
    """One unit of work, in a transaction of its own: DDL with a lock timeout,
    UTC (periods are UTC days and months), no statement timeout. SET LOCAL
    only, so nothing outlives the transaction (safe behind a transaction-mode
    pooler). The functions below run in it (the caller's transaction)."""
    async with DB.transaction() as transaction:
        connection = transaction.connection
        await connection.execute(sql.UTC)
        await connection.execute(sql.NO_STATEMENT_TIMEOUT)
        await connection.execute(sql.lock_timeout(PARTITION_LOCK_TIMEOUT_MS))
        yield


async def partitions(spec: Spec) -> list[Partition]:
    """The table's partitions, oldest first (the default one last)."""
    return [
        Partition(row["name"], row["lower"], row["upper"])
        for row in await DB.require_transaction().connection.fetch(PARTITIONS, spec.table)
    ]


async def name_indexes_like_parent(partition: str) -> None:
    """Name a partition's indexes ``<partition>_<suffix>`` after the table's
    ``<table>_<suffix>`` (PostgreSQL names them from the columns), so
    ``flowforge.core.errors`` maps a unique violation reported on the partition to
    the table constraint's message, and a plan reads as the index it uses."""
    connection = DB.require_transaction().connection
    for row in await connection.fetch(PARTITION_INDEXES, partition):
        wanted = f"{partition}_{row['parent'].removeprefix(row['tbl'] + '_')}"
        if row["child"] != wanted:
            await connection.execute(sql.rename_index(row["child"], wanted))


async def create_partition(spec: Spec, start: datetime.datetime) -> str:
    """Create the partition for the period starting at `start`, moving into it any
    rows of that range the default partition holds. In the caller's transaction
    (a unit of its own: :func:`ensure`)."""
    name = partition_name(spec, start)
    end = period_start(start, spec.period, 1)
    default = f"{spec.table}_default"
    connection = DB.require_transaction().connection
    stray = int(await connection.fetchval(DEFAULT_ROWS_IN_RANGE[spec.table], start, end))
    if not stray:
        await connection.execute(sql.create_partition(spec.table, name, start, end))
    else:
        # PostgreSQL refuses a partition for a range the default one holds
        # rows of: take the default partition out, create the partition,
        # send the rows back through the table, put the default one back.
        await connection.execute(sql.detach_partition(spec.table, default))
        await connection.execute(sql.create_partition(spec.table, name, start, end))
        quiet = spec.table in sql.HISTORY_TRIGGER_OFF
        if quiet:
            await connection.execute(sql.HISTORY_TRIGGER_OFF[spec.table])
        await connection.execute(MOVE_FROM_DEFAULT[spec.table], start, end)
        if quiet:
            await connection.execute(sql.HISTORY_TRIGGER_ON[spec.table])
        await connection.execute(sql.attach_default_partition(spec.table, default))
        logger.warning("partitions.moved_from_default", partition=name, rows=stray)
    await name_indexes_like_parent(name)
    return name


@dataclass
class MaintenanceReport:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    detached: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # busy: lock not granted in time
    # Exact rows in the dropped (or detached) partitions, by table.
    retired_rows: dict[str, int] = field(default_factory=dict)
    default_rows: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False

    def describe(self) -> str:
        verb = "would" if self.dry_run else ""
        parts = [
            f"{verb + ' create' if verb else 'created'}: {', '.join(self.created) or '-'}",
            f"{verb + ' drop' if verb else 'dropped'}: {', '.join(self.dropped) or '-'}",
        ]
        if self.detached:
            parts.append(f"detached: {', '.join(self.detached)}")
        if self.skipped:
            parts.append(f"skipped (busy, retried next run): {', '.join(self.skipped)}")
        stray = {table: rows for table, rows in self.default_rows.items() if rows}
        if stray:
            parts.append(
                "rows in default partitions: "
                + ", ".join(f"{table} {rows}" for table, rows in stray.items())
            )
        return "; ".join(parts)


async def ensure(
    report: MaintenanceReport, *, now: datetime.datetime | None = None
) -> MaintenanceReport:
    """Create the current period's partition and those ahead, and a partition for
    every period whose rows wait in the default partition (idempotent)."""
    for spec in SPECS:
        ahead = PARTITION_DAYS_AHEAD if spec.period == "day" else PARTITION_MONTHS_AHEAD
        async with _unit():
            connection = DB.require_transaction().connection
            if not await connection.fetchval(IS_PARTITIONED, spec.table):
                continue  # not there yet (a database behind the code's migrations)
            now = now or await connection.fetchval(NOW)
            found = await partitions(spec)
            stray = {row[0] for row in await connection.fetch(STRAY_PERIODS[spec.table])}
        wanted = {period_start(now, spec.period, n) for n in range(ahead + 1)} | stray
        for start in sorted(wanted):
            if any(p.lower == start or p.covers(start) for p in found):
                continue
            if report.dry_run:
                report.created.append(partition_name(spec, start))
                continue
            try:
                async with _unit():
                    report.created.append(await create_partition(spec, start))
            except asyncpg.LockNotAvailableError:
                report.skipped.append(partition_name(spec, start))
        async with _unit():
            report.default_rows[spec.table] = int(
                await DB.require_transaction().connection.fetchval(DEFAULT_ROWS[spec.table])
            )
    return report


async def drop_expired(
    report: MaintenanceReport,
    *,
    outbox_retention_days: float,
    run_retention_days: float,
    detach: bool = False,
) -> MaintenanceReport:
    """Drop (or detach) every partition whose rows have all passed retention.

    A retention of 0 keeps that history forever: nothing is dropped.
    """
    for spec, days in (
        (OUTBOX, outbox_retention_days),
        (STEP_LOGS, run_retention_days),
        (HISTORY, run_retention_days),
    ):
        if days <= 0:
            continue
        async with _unit():
            connection = DB.require_transaction().connection
            if not await connection.fetchval(IS_PARTITIONED, spec.table):
                continue  # not there yet (a database behind the code's migrations)
            now = await connection.fetchval(NOW)
            cutoff = now - datetime.timedelta(days=days)
            found = await partitions(spec)
        for partition in found:
            if partition.upper is None or partition.upper > cutoff:
                continue  # the default partition, or not all old enough
            try:
                async with _unit():
                    await _retire(spec, partition, cutoff, report, detach=detach)
            except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
                report.skipped.append(partition.name)
    logger.info(
        "partitions.expired",
        dry_run=report.dry_run,
        dropped=",".join(report.dropped),
        detached=",".join(report.detached),
        skipped=",".join(report.skipped),
    )
    return report


async def _retire(
    spec: Spec,
    partition: Partition,
    cutoff: datetime.datetime,
    report: MaintenanceReport,
    *,
    detach: bool,
) -> None:
    """Drop (or detach) `partition` if every row has expired; in the caller's transaction."""
    connection = DB.require_transaction().connection
    # No row can be written into it between the check and the drop.
    await connection.execute(sql.lock_partition(partition.name))
    expired = await connection.fetchval(
        ALL_EXPIRED[spec.table], cutoff, partition.lower, partition.upper
    )
    if not expired:
        return
    # Exact, not the statistics' estimate (-1 before the first ANALYZE): the
    # pruned-rows metric must not drift. Under the SHARE lock nothing is added or
    # removed meanwhile; no statement timeout in a unit (a month of step logs).
    rows = await connection.fetchval(EXACT_ROWS[spec.table], partition.lower, partition.upper)
    report.retired_rows[spec.table] = report.retired_rows.get(spec.table, 0) + int(rows)
    if report.dry_run:
        report.dropped.append(partition.name)
    elif detach:
        await connection.execute(sql.detach_partition(spec.table, partition.name))
        report.detached.append(partition.name)
    else:
        await connection.execute(sql.drop_partition(partition.name))
        report.dropped.append(partition.name)


async def maintain(
    *,
    outbox_retention_days: float,
    run_retention_days: float,
    dry_run: bool = False,
    detach: bool = False,
) -> MaintenanceReport:
    """Prepare partitions ahead, then retire the expired ones (one transaction per
    partition: call it outside a transaction)."""
    DB.require_no_transaction("partition maintenance")
    report = MaintenanceReport(dry_run=dry_run)
    await ensure(report)
    return await drop_expired(
        report,
        outbox_retention_days=outbox_retention_days,
        run_retention_days=run_retention_days,
        detach=detach,
    )
