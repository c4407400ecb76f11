"""Operational commands of the `flowforge` Piccolo app (issue 4).

    piccolo flowforge relay            publish the outbox until SIGTERM / SIGINT
    piccolo flowforge outbox_status    lag, backlog, dead letters (--json for machines)
    piccolo flowforge outbox_requeue   retry dead letters (--event_id=<uuid> for one)
    piccolo flowforge prune            delete expired history (--dry_run to only count)
    piccolo flowforge reap             fail runs whose lease expired (--dry_run to only list)
    piccolo flowforge partitions       create time partitions ahead, drop expired ones
    piccolo flowforge backfill_versions  version 1 of every workflow that lacks one (resumable)

Each opens a small pool of its own and closes it on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import prometheus_client

from flowforge.core import metrics
from flowforge.core.logs import configure_logging, get_logger
from flowforge.core.settings import Environment, PublisherKind, get_settings
from flowforge.db.engine import DB
from flowforge.jobs.partitions import maintain as maintain_partitions
from flowforge.jobs.reaper import reap_stuck_runs
from flowforge.jobs.retention import prune as prune_history
from flowforge.jobs.versions import backfill_first_versions
from flowforge.outbox.status import outbox_status as read_outbox_status
from flowforge.outbox.status import requeue_dead_letters

logger = get_logger("flowforge.relay")

# Claims wait at most this long for a row lock (e.g. a row being edited by
# hand) before the batch is retried, instead of stalling the relay.
RELAY_LOCK_TIMEOUT_MS = 5000


@contextlib.asynccontextmanager
async def pool(
    application_name: str, max_size: int = 2, **server_settings: str
) -> AsyncIterator[None]:
    config = DB.config
    await DB.start_connection_pool(
        min_size=1,
        max_size=max_size,
        server_settings={
            **config["server_settings"],
            "application_name": application_name,
            **server_settings,
        },
    )
    try:
        yield
    finally:
        await DB.close_connection_pool()


async def relay() -> None:
    """Publish outbox events until SIGTERM or SIGINT (a second signal stops at once)."""
    # Imported here, not at the top: every process that reads the app registry
    # (the API too) imports this module, and only the relay needs Redis.
    from flowforge.relay.publishers import create_publisher
    from flowforge.relay.relay import Relay

    configure_logging()
    settings = get_settings()
    if (
        settings.environment is Environment.PRODUCTION
        and settings.outbox_publisher is PublisherKind.LOG
    ):
        print(
            "FlowForge cannot start: OUTBOX_PUBLISHER=log only prints events; "
            "set OUTBOX_PUBLISHER=redis in production",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if settings.relay_metrics_port is not None:
        # Its own /metrics (a thread of prometheus_client): relay counters,
        # reaper and prune counts, and this process's pool.
        metrics.register_pool(DB)
        prometheus_client.start_http_server(settings.relay_metrics_port)
        logger.info("relay.metrics_serving", port=settings.relay_metrics_port)
    publisher = create_publisher(settings)
    worker = Relay(settings, publisher)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def on_signal(name: str) -> None:
        if worker.stopping.is_set():
            logger.warning("relay.stop_now", signal=name)
            if main is not None:
                main.cancel()
            return
        logger.info("relay.stopping", signal=name)
        worker.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        # Claims, housekeeping and the stats probe: three connections at most.
        async with pool("flowforge-relay", 3, lock_timeout=str(RELAY_LOCK_TIMEOUT_MS)):
            await worker.run()
    except asyncio.CancelledError:
        pass  # second signal: the batch in flight rolled back; nothing is lost
    finally:
        await publisher.close()


async def outbox_status(json_output: bool = False) -> None:
    """Show outbox lag, backlog and dead letters.

    :param json_output:
        Print one JSON object instead of text.
    """
    async with pool("flowforge-cli", 1), DB.transaction():
        status = await read_outbox_status()
    if json_output:
        print(json.dumps(status, indent=2))
        return
    lines = [
        ("lag", f"{status['lag_seconds']:.3f} s"),
        ("unpublished", status["unpublished"]),
        ("  retrying after failures", status["retrying"]),
        ("  held behind dead letters", status["held_behind_dead_letters"]),
        ("dead-lettered", status["dead_lettered"]),
        ("published (kept)", status["published"]),
        ("oldest unpublished", status["oldest_unpublished_at"] or "-"),
        ("oldest published", status["oldest_published_at"] or "-"),
    ]
    for label, value in lines:
        print(f"{label + ':':<28}{value}")
    for item in status["dead_letters"]:
        print(
            f"  dead letter {item['id']} {item['event_type']} "
            f"{item['aggregate_type']}/{item['aggregate_id']} after {item['attempts']} "
            f"attempts at {item['dead_lettered_at']}: {item['last_error']}"
        )


async def outbox_requeue(event_id: str = "", all_dead_letters: bool = False) -> None:
    """Give dead-lettered events a fresh set of attempts.

    :param event_id:
        Requeue this event only.
    :param all_dead_letters:
        Requeue every dead letter.
    """
    ids: list[Any] | None
    if event_id:
        try:
            ids = [uuid.UUID(event_id)]
        except ValueError:
            print(f"not an event id: {event_id!r}", file=sys.stderr)
            raise SystemExit(2) from None
    elif all_dead_letters:
        ids = None
    else:
        print("say which: --event_id=<uuid> or --all_dead_letters", file=sys.stderr)
        raise SystemExit(2)
    async with pool("flowforge-cli", 1), DB.transaction():
        count = await requeue_dead_letters(ids)
    print(f"requeued: {count} dead-lettered events")


async def prune(dry_run: bool = False) -> None:
    """Delete published events and finished runs older than their retention.

    :param dry_run:
        Only count what would be deleted.
    """
    configure_logging()
    async with pool("flowforge-prune", 1):
        report = await prune_history(get_settings(), dry_run=dry_run)
    print(report.describe())


async def reap(dry_run: bool = False) -> None:
    """Fail runs stuck in `running` past RUN_LEASE_TIMEOUT, with their run.failed events.

    :param dry_run:
        Only list the runs that would be failed; change nothing.
    """
    configure_logging()
    settings = get_settings()
    async with pool("flowforge-reaper", 1):
        report = await reap_stuck_runs(
            settings.run_lease_timeout, max_claims=settings.run_max_claims, dry_run=dry_run
        )
    print(report.describe())


async def partitions(dry_run: bool = False, detach: bool = False) -> None:
    """Create the outbox / step-log time partitions ahead and retire expired ones.

    :param dry_run:
        Only show what would be created and dropped.
    :param detach:
        Detach expired partitions (kept as plain tables, e.g. to archive) instead of dropping them.
    """
    configure_logging()
    settings = get_settings()
    async with pool("flowforge-partitions", 1):
        report = await maintain_partitions(
            outbox_retention_days=settings.outbox_retention_days,
            run_retention_days=settings.run_retention_days,
            dry_run=dry_run,
            detach=detach,
        )
    print(report.describe())


async def backfill_versions(
    batch_size: int = 1000, start_after: str = "", max_batches: int = 0
) -> None:
    """Write version 1 of every workflow that lacks one, in batches (resumable; issue 17).

    The versions migration (2026-12-07T19:14:50) runs this itself; run it by hand
    to do the backfill ahead of the migration on a big database, or to resume one.

    :param batch_size:
        Workflows per batch; each batch is its own transaction.
    :param start_after:
        Resume after this workflow id (the last_id of the last batch logged).
    :param max_batches:
        Stop after this many batches (0: run to the end).
    """
    configure_logging()
    if batch_size < 1:
        print("backfill_versions: --batch_size must be at least 1", file=sys.stderr)
        raise SystemExit(2)
    if max_batches < 0:
        print("backfill_versions: --max_batches must be 0 or more", file=sys.stderr)
        raise SystemExit(2)
    try:
        after = uuid.UUID(start_after) if start_after else None
    except ValueError:
        print("backfill_versions: --start_after must be a workflow id (a UUID)", file=sys.stderr)
        raise SystemExit(2) from None
    async with pool("flowforge-backfill-versions", 1):
        report = await backfill_first_versions(
            batch_size=batch_size, start_after=after, max_batches=max_batches or None
        )
    print(
        f"versions backfill: {report.written} versions written in {report.batches} batches; "
        f"{'every workflow has its current version' if not report.missing else 'still missing: ' + ', '.join(map(str, report.missing))}"
    )
