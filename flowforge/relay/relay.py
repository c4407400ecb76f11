"""The outbox relay: publish every committed event, none lost, none stuck.

One :class:`Relay` per process (``piccolo flowforge relay``); run as many
processes as you like. Each batch is one transaction on a pooled connection:

    BEGIN; claim (FOR UPDATE SKIP LOCKED); publish; mark published / failed; COMMIT

so a relay that dies anywhere before COMMIT leaves its rows unpublished and
unlocked (the database drops a dead session's locks) for any relay to claim
again: at-least-once delivery, and consumers de-duplicate on the event id.

Failures:

* An event the broker rejects is charged an attempt and backs off
  exponentially (``attempts``, ``last_error``, ``next_attempt_at`` on its
  row); at ``OUTBOX_MAX_ATTEMPTS`` it is dead-lettered. Later events of the
  same aggregate wait behind it (order is kept; they show as lag and as
  "held" in ``outbox_status``) until it is requeued
  (``piccolo flowforge outbox_requeue``) or deleted. Other aggregates are not
  affected.
* A broker that cannot be reached at all charges nothing: the batch rolls
  back and the relay retries with back-off, so an outage of any length
  dead-letters nothing.
* A database error (restart, killed backend, failover) rolls back the batch;
  the relay backs off and carries on with a fresh connection. Each batch runs
  in its own task, with no transaction inherited, so a connection that died
  inside a transaction cannot stay current for later batches (the Piccolo
  bug in docs/decisions/13-piccolo-internals.md).

Waking: a LISTEN connection (:mod:`flowforge.relay.listener`) wakes an idle
relay as soon as an insert commits; without it (``RELAY_LISTEN=false``, or
NOTIFY lost) the relay polls, from ``RELAY_POLL_MIN_INTERVAL`` doubling to
``RELAY_POLL_MAX_INTERVAL`` while idle. Each idle poll is a single index
probe (a transaction of its own, like everything the relay reads).

The relay also runs the reaper and retention pruning (with the time-partition
maintenance before it) on timers
(``RELAY_REAP_INTERVAL``, ``RELAY_PRUNE_INTERVAL``; 0 turns either off).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, fields
from typing import Any
from uuid import UUID

import asyncpg

from flowforge.core import metrics
from flowforge.core.errors import CONNECTION_ERRORS, DatabaseUnavailableError
from flowforge.core.logs import describe_error, get_logger
from flowforge.core.settings import Settings
from flowforge.db.engine import DB
from flowforge.jobs.partitions import MaintenanceReport
from flowforge.jobs.partitions import ensure as ensure_partitions
from flowforge.jobs.reaper import reap_stuck_runs
from flowforge.jobs.retention import prune
from flowforge.outbox.status import outbox_health
from flowforge.relay import store
from flowforge.relay.listener import OutboxListener, listen_database_url
from flowforge.relay.publishers import BrokerUnavailableError, Publisher

logger = get_logger("flowforge.relay")

STATS_INTERVAL_SECONDS = 60.0
HOUSEKEEPING_FIRST_RUN_SECONDS = 30.0
LISTENER_RESTART_SECONDS = 5.0

# Errors that mean "the database is not there right now": log briefly, retry.
DATABASE_DOWN: tuple[type[Exception], ...] = (
    *CONNECTION_ERRORS,
    DatabaseUnavailableError,
    asyncpg.PostgresError,
)


@dataclass
class BatchResult:
    """What one claim-publish-mark transaction did."""

    claimed: int = 0
    published: int = 0
    failed: int = 0
    dead_lettered: int = 0
    not_attempted: int = 0


@dataclass
class RelayStats:
    """Totals since the relay started."""

    batches: int = 0
    published: int = 0
    failed: int = 0
    dead_lettered: int = 0
    broker_errors: int = 0
    database_errors: int = 0
    # Idle pauses that ended early (a notification woke the relay) or timed out (a poll).
    woken: int = 0
    polls: int = 0

    def add(self, result: BatchResult) -> None:
        self.batches += 1
        self.published += result.published
        self.failed += result.failed
        self.dead_lettered += result.dead_lettered
        metrics.RELAY_BATCHES.inc()
        metrics.RELAY_PUBLISHED.inc(result.published)
        metrics.RELAY_FAILED.inc(result.failed)
        metrics.RELAY_DEAD_LETTERED.inc(result.dead_lettered)


class Relay:
    """Claims, publishes and marks outbox events until :meth:`stop` is called."""

    def __init__(self, settings: Settings, publisher: Publisher) -> None:
        self.settings = settings
        self.publisher = publisher
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.listener: OutboxListener | None = None
        if settings.relay_listen and listen_database_url(settings) is not None:
            self.listener = OutboxListener(settings, self.wake)
        elif settings.relay_listen:
            logger.warning(
                "relay.listen_off",
                reason="DATABASE_POOLER=transaction and no RELAY_LISTEN_DATABASE_URL; polling",
            )
        self.stats = RelayStats()
        # Set while the relay waits for work (found none); its current poll interval.
        self.idle = asyncio.Event()
        self.idle_delay = settings.relay_poll_min_interval

    def stop(self) -> None:
        """Finish the batch in flight, then return from :meth:`run`."""
        self.stopping.set()
        self.wake.set()

    # -- one batch -------------------------------------------------------------

    async def run_once(self) -> BatchResult:
        """Claim, publish and mark one batch in one transaction.

        Runs in a task of its own that starts with no current transaction,
        so nothing a failed batch left in the context reaches the next one.
        """
        return await asyncio.create_task(self._batch())

    async def _batch(self) -> BatchResult:
        DB.current_transaction.set(None)
        started = time.perf_counter()
        result = BatchResult()
        settings = self.settings
        async with DB.transaction():
            events = await store.claim_batch(settings.relay_batch_size)
            result.claimed = len(events)
            if not events:
                return result
            outcomes = await self.publisher.publish(events)
            published: list[UUID] = []
            failures: list[tuple[UUID, str]] = []
            stopped: set[tuple[str, UUID]] = set()
            for event, outcome in zip(events, outcomes, strict=True):
                if event.aggregate in stopped:
                    # After a failure, later events of the aggregate wait,
                    # whatever the publisher said about them.
                    result.not_attempted += 1
                elif outcome is None:
                    published.append(event.id)
                else:
                    stopped.add(event.aggregate)
                    if outcome.attempted:
                        failures.append((event.id, outcome.error))
                    else:
                        result.not_attempted += 1
            if published:
                result.published = await store.mark_published(published)
                if result.published != len(published):  # pragma: no cover - would be a bug
                    logger.error(
                        "relay.mark_mismatch", expected=len(published), got=result.published
                    )
            if failures:
                rows = await store.mark_failed(
                    failures,
                    base_delay=settings.outbox_retry_base_delay,
                    max_delay=settings.outbox_retry_max_delay,
                    max_attempts=settings.outbox_max_attempts,
                )
                errors = dict(failures)
                for row in rows:
                    result.failed += 1
                    fields_ = {
                        "event_id": row["id"],
                        "event_type": row["event_type"],
                        "aggregate_type": row["aggregate_type"],
                        "aggregate_id": row["aggregate_id"],
                        "attempts": row["attempts"],
                        "error": errors[row["id"]],
                    }
                    if row["dead_lettered"]:
                        result.dead_lettered += 1
                        logger.error("relay.dead_lettered", **fields_)
                    else:
                        logger.warning("relay.publish_failed", **fields_)
        self.stats.add(result)
        logger.debug(
            "relay.batch",
            claimed=result.claimed,
            published=result.published,
            failed=result.failed,
            ms=(time.perf_counter() - started) * 1000,
        )
        return result

    async def _has_work(self) -> bool:
        async def probe() -> bool:
            DB.current_transaction.set(None)
            async with DB.transaction():
                found = await store.has_work()
            return found

        return await asyncio.create_task(probe())

    # -- the loop --------------------------------------------------------------

    async def run(self) -> None:
        """Publish until stopped; also listens and runs housekeeping timers."""
        settings = self.settings
        helpers: list[asyncio.Task[None]] = []
        if self.listener is not None:
            helpers.append(asyncio.create_task(self._listen(self.listener)))
        if settings.relay_reap_interval > 0:
            helpers.append(
                asyncio.create_task(self._every(settings.relay_reap_interval, self._reap))
            )
        if settings.relay_prune_interval > 0:
            helpers.append(
                asyncio.create_task(self._every(settings.relay_prune_interval, self._prune))
            )
        helpers.append(asyncio.create_task(self._every(STATS_INTERVAL_SECONDS, self._log_stats)))
        logger.info(
            "relay.started",
            publisher=self.publisher.name,
            batch_size=settings.relay_batch_size,
            listen=settings.relay_listen,
            poll_min=settings.relay_poll_min_interval,
            poll_max=settings.relay_poll_max_interval,
            max_attempts=settings.outbox_max_attempts,
        )
        try:
            await self._publish_loop()
        finally:
            self.stopping.set()
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            logger.info(
                "relay.stopped",
                **{field.name: getattr(self.stats, field.name) for field in fields(self.stats)},
            )

    async def _publish_loop(self) -> None:
        settings = self.settings
        idle_delay = error_delay = settings.relay_poll_min_interval
        busy = True  # look straight away at start-up
        while not self.stopping.is_set():
            self.wake.clear()
            try:
                claimed = 0
                if busy or await self._has_work():
                    result = await self.run_once()
                    claimed = result.claimed
            except BrokerUnavailableError as error:
                self.stats.broker_errors += 1
                metrics.RELAY_ERRORS.labels(cause="broker").inc()
                logger.warning("relay.broker_unavailable", error=str(error), retry_in=error_delay)
                await self._pause(error_delay, wakeable=False)
                error_delay = min(error_delay * 2, settings.relay_poll_max_interval)
                continue
            except DATABASE_DOWN as error:
                self.stats.database_errors += 1
                metrics.RELAY_ERRORS.labels(cause="database").inc()
                logger.warning(
                    "relay.database_error",
                    error=describe_error(error),
                    retry_in=error_delay,
                )
                await self._pause(error_delay, wakeable=False)
                error_delay = min(error_delay * 2, settings.relay_poll_max_interval)
                continue
            except Exception:
                # A bug (ours or a publisher's): nothing was marked, the batch
                # rolled back. Keep the process up and retry with back-off.
                metrics.RELAY_ERRORS.labels(cause="unexpected").inc()
                logger.exception("relay.unexpected_error", retry_in=error_delay)
                await self._pause(error_delay, wakeable=False)
                error_delay = min(error_delay * 2, settings.relay_poll_max_interval)
                continue
            error_delay = settings.relay_poll_min_interval
            if claimed:
                idle_delay = settings.relay_poll_min_interval
                busy = claimed >= settings.relay_batch_size
                continue
            busy = False
            self.idle_delay = idle_delay
            self.idle.set()
            try:
                woken = await self._pause(idle_delay)
            finally:
                self.idle.clear()
            if woken:
                self.stats.woken += 1
                idle_delay = settings.relay_poll_min_interval
            else:
                self.stats.polls += 1
                idle_delay = min(idle_delay * 2, settings.relay_poll_max_interval)

    async def _pause(self, seconds: float, *, wakeable: bool = True) -> bool:
        """Sleep up to `seconds`; True if woken early (notification or stop)."""
        event = self.wake if wakeable else self.stopping
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            return False
        return True

    # -- housekeeping ----------------------------------------------------------

    async def _listen(self, listener: OutboxListener) -> None:
        """Keep the listener running: a bug in it must not silently end wake-ups."""
        while not self.stopping.is_set():
            try:
                await listener.run(self.stopping)
            except Exception:
                logger.exception("relay.listener_crashed", restart_in=LISTENER_RESTART_SECONDS)
                await self._pause(LISTENER_RESTART_SECONDS, wakeable=False)

    async def _every(self, seconds: float, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `job` every `seconds` until stopped; the first run comes after at
        most 30 s, so a relay that restarts often still does its housekeeping."""
        delay = min(seconds, HOUSEKEEPING_FIRST_RUN_SECONDS)
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
                return
            delay = seconds
            try:
                await asyncio.create_task(job())
            except DATABASE_DOWN as error:
                logger.warning("relay.housekeeping_failed", error=describe_error(error))
            except Exception:
                logger.exception("relay.housekeeping_failed")

    async def _reap(self) -> None:
        DB.current_transaction.set(None)
        report = await reap_stuck_runs(
            self.settings.run_lease_timeout, max_claims=self.settings.run_max_claims
        )
        if report.runs:
            logger.info("relay.reaped", runs=len(report.runs))

    async def _prune(self) -> None:
        DB.current_transaction.set(None)
        # Time partitions ahead first (a missed day only fills the default partition).
        await ensure_partitions(MaintenanceReport())
        await prune(self.settings)

    async def _log_stats(self) -> None:
        DB.current_transaction.set(None)
        async with DB.transaction():
            health = await outbox_health()
        logger.info(
            "relay.stats",
            published=self.stats.published,
            failed=self.stats.failed,
            dead_lettered_total=health["dead_lettered"],
            lag_seconds=health["lag_seconds"],
            listening=self.listener is not None and self.listener.connected.is_set(),
        )
