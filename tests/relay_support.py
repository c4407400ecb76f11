"""Helpers for the relay tests: settings, events in bulk, Redis streams, running relays."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio

from flowforge.core.settings import PublisherKind, Settings, get_settings
from flowforge.db.engine import DB
from flowforge.relay.publishers import (
    OutboxEvent,
    PublishFailure,
    PublishOutcome,
    RedisStreamPublisher,
)
from flowforge.relay.relay import Relay

REDIS_URL = os.environ.get("FLOWFORGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def relay_settings(prefix: str = "fftest", **overrides: Any) -> Settings:
    """The session's settings with fast, test-friendly relay values."""
    values: dict[str, Any] = {
        "outbox_publisher": PublisherKind.REDIS,
        "redis_url": REDIS_URL,
        "redis_stream_prefix": prefix,
        "redis_stream_maxlen": 0,
        "relay_batch_size": 200,
        "relay_poll_min_interval": 0.05,
        "relay_poll_max_interval": 0.5,
        "relay_listen": False,
        "outbox_max_attempts": 3,
        "outbox_retry_base_delay": 0.2,
        "outbox_retry_max_delay": 5.0,
        "relay_reap_interval": 0.0,
        "relay_prune_interval": 0.0,
    }
    values.update(overrides)
    return get_settings().model_copy(update=values)


def aggregate_id(number: int) -> uuid.UUID:
    return uuid.UUID(int=number + 1)


async def insert_events(
    aggregates: int, per_aggregate: int, aggregate_type: str = "workflow_run", start: int = 0
) -> None:
    """`aggregates` x `per_aggregate` events, interleaved: round n holds event n of each.

    Payload ``{"n": n}`` numbers each aggregate's events in insertion order.
    """
    await DB.fetch(
        """
        INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
        SELECT $1, ('00000000-0000-0000-0000-' || lpad(to_hex(a + $4 + 1), 12, '0'))::uuid,
            'test.event', jsonb_build_object('n', n)
        FROM generate_series(1, $3) AS n, generate_series(0, $2 - 1) AS a
        ORDER BY n, a
        """,
        aggregate_type,
        aggregates,
        per_aggregate,
        start,
    )


async def insert_event(aggregate: uuid.UUID, n: int = 1, aggregate_type: str = "workflow") -> Any:
    rows = await DB.fetch(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) "
        "VALUES ($1, $2, 'test.event', jsonb_build_object('n', $3::int)) RETURNING id, seq",
        aggregate_type,
        aggregate,
        n,
    )
    return rows[0]


async def count(sql: str, *args: Any) -> int:
    return int((await DB.fetch(sql, *args))[0][0])


async def unpublished() -> int:
    return await count("SELECT count(*) FROM outbox WHERE published_at IS NULL")


async def wait_for(
    condition: Callable[[], Awaitable[bool]], within: float, interval: float = 0.02
) -> float:
    """Seconds until `condition()` held; AssertionError after `within` seconds."""
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > within:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def running(*relays: Relay) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run relays in the background; stop them (and surface their errors) on exit."""
    tasks = [asyncio.create_task(relay.run()) for relay in relays]
    try:
        yield tasks
    finally:
        for relay in relays:
            relay.stop()
        done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        for result in done:
            if isinstance(result, BaseException):
                raise result


async def redis_client() -> redis.asyncio.Redis:
    client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as error:  # pragma: no cover - environment problem
        await client.aclose()
        raise AssertionError(f"the relay tests need Redis at {REDIS_URL}: {error}") from error
    return client


async def delete_keys(client: redis.asyncio.Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
    if keys:
        await client.delete(*keys)


async def stream_entries(client: redis.asyncio.Redis, stream: str) -> list[dict[str, str]]:
    """Every entry of `stream`, oldest first, as str fields."""
    entries: list[dict[str, str]] = []
    last = "-"
    while True:
        chunk = await client.xrange(stream, min=last, max="+", count=5000)
        if last != "-":
            chunk = chunk[1:]  # `min` is inclusive
        if not chunk:
            return entries
        for _entry_id, fields in chunk:
            entries.append({key.decode(): value.decode() for key, value in fields.items()})
        last = chunk[-1][0].decode()


class ScriptedPublisher:
    """Wraps the real Redis publisher; fails chosen aggregates and records calls."""

    name = "scripted"

    def __init__(self, inner: RedisStreamPublisher, failing: set[uuid.UUID] | None = None) -> None:
        self.inner = inner
        self.failing = failing if failing is not None else set()
        self.calls: list[tuple[float, list[OutboxEvent]]] = []
        self.before: Callable[[Sequence[OutboxEvent]], Awaitable[None]] | None = None

    async def publish(self, events: Sequence[OutboxEvent]) -> Sequence[PublishOutcome]:
        self.calls.append((time.monotonic(), list(events)))
        if self.before is not None:
            await self.before(events)
        passing = [event for event in events if event.aggregate_id not in self.failing]
        outcomes = iter(await self.inner.publish(passing))
        return [
            PublishFailure("broker said no")
            if event.aggregate_id in self.failing
            else next(outcomes)
            for event in events
        ]

    async def close(self) -> None:
        await self.inner.close()
