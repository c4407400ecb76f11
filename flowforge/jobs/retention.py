"""Retention: history that does not grow forever (`piccolo flowforge prune`).

Deletes, oldest first and in batches:

* published outbox events older than ``OUTBOX_RETENTION_DAYS`` (by
  ``published_at``; unpublished and dead-lettered events are never pruned),
  using ``outbox_published_at_idx``;
* finished runs (completed, failed, cancelled) older than
  ``RUN_RETENTION_DAYS`` (by ``finished_at``), with their step logs (ON DELETE
  CASCADE, found through the ``run_step_logs`` (run_id, ...) unique index),
  using ``workflow_runs_terminal_finished_at_idx``.

Whole time partitions go first (``flowforge.jobs.partitions.drop_expired``): a
partition of ``outbox`` or ``run_step_logs`` whose every row has expired is
dropped - no row-by-row DELETE, no WAL per row, no bloat left for vacuum.
Their rows are counted exactly under the drop's lock (``flowforge_pruned_rows_total`` and
the report include them). The batched DELETE below handles the rest (partitions
that also hold rows still kept, the default partitions, the ``<table>_legacy``
partition a database converted with rows keeps until all of it has expired, and
``workflow_runs``, which is not partitioned: docs/decisions/12-time-partitions.md).

Each batch is one short statement (``PRUNE_BATCH_SIZE`` rows) in its own
transaction (:func:`prune` opens one per batch; :func:`prune_outbox_batch`
and :func:`prune_runs_batch` run in the caller's); rows another session has
locked are skipped (SKIP LOCKED) and left for the next run, so pruning never waits on the API or the relay and
never holds locks for long. A retention of 0 keeps that history forever.
Pruning is not a domain change: it emits no events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from piccolo.columns.combination import WhereRaw
from piccolo.query.methods.count import Count

from flowforge.core import metrics
from flowforge.core.logs import get_logger
from flowforge.core.settings import Settings
from flowforge.db.builder import ago
from flowforge.db.engine import DB
from flowforge.db.sql.retention import (
    COUNT_RUNS,
    GENERIC_PLANS,
    PRUNE_OUTBOX,
    PRUNE_RUNS,
    RESTORE_PLAN_CACHE_MODE,
)
from flowforge.db.tables import Outbox
from flowforge.jobs import partitions

logger = get_logger("flowforge.jobs.retention")

DAY_SECONDS = 86400.0


KIND = {"outbox": "outbox_events", "run_step_logs": "step_logs", "run_history": "history"}


def expired_events_count(keep_seconds: float, dropped: Sequence[str] = ()) -> Count:
    """Counting the published events past retention (``outbox_published_at_idx``),
    outside the partitions in `dropped` (see COUNT_RUNS)."""
    query = Outbox.count().where(Outbox.published_at < ago(keep_seconds))
    if dropped:
        query = query.where(WhereRaw("tableoid <> ALL({}::text[]::regclass[])", list(dropped)))
    return query


async def count_expired_events(keep_seconds: float, dropped: Sequence[str] = ()) -> int:
    """What a dry run would prune from the outbox row by row, once the partitions
    in `dropped` are gone; in the caller's transaction."""
    DB.require_transaction()
    return int(await expired_events_count(keep_seconds, dropped))


async def count_expired_runs(keep_seconds: float, dropped: Sequence[str] = ()) -> tuple[int, int]:
    """``(runs, their step logs)`` a dry run would prune row by row, once the
    partitions in `dropped` are gone; in the caller's transaction."""
    connection = DB.require_transaction().connection
    row = await connection.fetchrow(COUNT_RUNS, keep_seconds, list(dropped))
    return int(row["runs"]), int(row["step_logs"])


async def prune_outbox_batch(keep_seconds: float, batch_size: int) -> int:
    """Delete up to `batch_size` expired published events; in the caller's transaction."""
    connection = DB.require_transaction().connection
    return int(await connection.fetchval(PRUNE_OUTBOX, keep_seconds, batch_size))


async def prune_runs_batch(keep_seconds: float, batch_size: int) -> tuple[int, int]:
    """Delete up to `batch_size` expired finished runs (their step logs cascade);
    ``(runs, step logs)``. In the caller's transaction."""
    connection = DB.require_transaction().connection
    previous = await connection.fetchval(GENERIC_PLANS)  # see GENERIC_PLANS
    row = await connection.fetchrow(PRUNE_RUNS, keep_seconds, batch_size)
    await connection.execute(RESTORE_PLAN_CACHE_MODE, previous)
    return int(row["runs"]), int(row["step_logs"])


@dataclass
class PruneReport:
    outbox_events: int = 0
    runs: int = 0
    step_logs: int = 0
    dry_run: bool = False
    # Whole partitions dropped first (their rows are not in the counts above,
    # in a dry run either: it reports what the real prune would).
    partition_report: partitions.MaintenanceReport | None = None
    # Exact rows of the dropped partitions, by table (counted under the drop's lock).
    partition_rows: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        verb = "would prune" if self.dry_run else "pruned"
        text = (
            f"{verb}: {self.outbox_events} published outbox events, "
            f"{self.runs} finished runs with {self.step_logs} step logs"
        )
        dropped = self.partition_report.dropped if self.partition_report else []
        if dropped:
            rows = self.partition_rows
            text += (
                f"; {'would drop' if self.dry_run else 'dropped'} {len(dropped)} expired "
                f"partitions ({rows.get('outbox', 0)} events, "
                f"{rows.get('run_step_logs', 0)} step logs, "
                f"{rows.get('run_history', 0)} history entries): {', '.join(dropped)}"
            )
        if self.partition_report and self.partition_report.skipped:
            text += f"; busy, left for next time: {', '.join(self.partition_report.skipped)}"
        return text


async def prune(settings: Settings, *, dry_run: bool = False) -> PruneReport:
    """Delete expired history per the retention settings; idempotent.

    A job of several units of work: call it outside a transaction (each batch
    commits before the next).
    """
    DB.require_no_transaction("prune")
    report = PruneReport(dry_run=dry_run)
    batch = settings.prune_batch_size
    report.partition_report = await partitions.drop_expired(
        partitions.MaintenanceReport(dry_run=dry_run),
        outbox_retention_days=settings.outbox_retention_days,
        run_retention_days=settings.run_retention_days,
    )
    # Counted exactly by the drop itself, under its lock (flowforge.jobs.partitions._retire).
    report.partition_rows = dict(report.partition_report.retired_rows)
    # What a dry run leaves out of its row-by-row counts (a real run dropped them).
    dropped = report.partition_report.dropped if dry_run else []
    if not dry_run:
        for table, rows in report.partition_rows.items():
            metrics.PRUNED_ROWS.labels(kind=KIND[table]).inc(rows)
    if settings.outbox_retention_days > 0:
        keep = settings.outbox_retention_days * DAY_SECONDS
        if dry_run:
            async with DB.transaction():
                report.outbox_events = await count_expired_events(keep, dropped)
        else:
            while True:
                async with DB.transaction():
                    deleted = await prune_outbox_batch(keep, batch)
                report.outbox_events += deleted
                metrics.PRUNED_ROWS.labels(kind="outbox_events").inc(deleted)
                if deleted < batch:
                    break
    if settings.run_retention_days > 0:
        keep = settings.run_retention_days * DAY_SECONDS
        if dry_run:
            async with DB.transaction():
                report.runs, report.step_logs = await count_expired_runs(keep, dropped)
        else:
            while True:
                async with DB.transaction():
                    runs, step_logs = await prune_runs_batch(keep, batch)
                report.runs += runs
                report.step_logs += step_logs
                metrics.PRUNED_ROWS.labels(kind="runs").inc(runs)
                metrics.PRUNED_ROWS.labels(kind="step_logs").inc(step_logs)
                if runs < batch:
                    break
    logger.info(
        "retention.pruned",
        dry_run=dry_run,
        outbox_events=report.outbox_events,
        runs=report.runs,
        step_logs=report.step_logs,
        partitions_dropped=len(report.partition_report.dropped),
        partition_events=report.partition_rows.get("outbox", 0),
        partition_step_logs=report.partition_rows.get("run_step_logs", 0),
    )
    return report
