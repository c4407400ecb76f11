"""Where the relay sends events: a small interface and its implementations.

:class:`Publisher` is the whole contract. Implementations:

* :class:`RedisStreamPublisher` (``OUTBOX_PUBLISHER=redis``): Redis Streams,
  one stream per aggregate type, ``<REDIS_STREAM_PREFIX>:<aggregate_type>``
  (e.g. ``flowforge:events:workflow_run``). One stream per aggregate type lets
  a consumer read only what it cares about, keeps every event of an aggregate
  in one stream (so stream order is publish order for it), and lets each
  stream be trimmed on its own (``REDIS_STREAM_MAXLEN``, approximate).
* :class:`LogPublisher` (``OUTBOX_PUBLISHER=log``): one JSON line per event
  on stdout, for development. It "publishes" to nobody, so the relay refuses
  it when ``FLOWFORGE_ENV=production``.

Every message carries the same fields (:meth:`OutboxEvent.message`): ``id``
(the outbox row's id, the consumers' de-duplication key: delivery is
at-least-once), ``type``, ``aggregate_type``, ``aggregate_id``,
``occurred_at`` (ISO 8601) and ``payload`` (a JSON object, as text).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import redis.asyncio
import redis.exceptions

from flowforge.core.json import dumps, loads
from flowforge.core.settings import PublisherKind, Settings
from flowforge.relay.event import OutboxEvent


@dataclass(frozen=True, slots=True)
class PublishFailure:
    """An event that was not published.

    ``attempted`` is False when the publisher did not even try it because an
    earlier event of the same aggregate failed in the same call: no attempt
    is charged to it.
    """

    error: str
    attempted: bool = True


# Per event: None when it was published, else why not.
PublishOutcome = PublishFailure | None

NOT_ATTEMPTED = PublishFailure("an earlier event of its aggregate failed", attempted=False)


class BrokerUnavailableError(Exception):
    """The broker could not be reached; some, all or none of the batch may have arrived."""


class Publisher(Protocol):
    """Publishes batches of events; the relay marks them published afterwards.

    ``publish`` receives events in publish order (each aggregate's events in
    its commit order, aggregates interleaved) and returns one outcome per
    event, in the same order. It must not publish an event after an earlier
    event of the same aggregate failed in the same call (return
    :data:`NOT_ATTEMPTED` for it): that is what keeps per-aggregate order.
    Raise :class:`BrokerUnavailableError` when the broker cannot be reached
    at all: the relay then retries the batch later without charging the
    events an attempt (an outage must not dead-letter healthy events).
    """

    name: str

    async def publish(self, events: Sequence[OutboxEvent]) -> Sequence[PublishOutcome]: ...

    async def close(self) -> None: ...


class LogPublisher:
    """Development publisher: one JSON object per line on stdout; never fails."""

    name = "log"

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    async def publish(self, events: Sequence[OutboxEvent]) -> Sequence[PublishOutcome]:
        stream = self._stream or sys.stdout
        lines = []
        for event in events:
            # The payload as an object, not JSON-in-JSON: this is for people.
            # Decoded and encoded exactly: its numbers keep every digit JSONB kept.
            message: dict[str, Any] = {**event.message(), "payload": loads(event.payload)}
            lines.append(dumps(message) + "\n")
        stream.write("".join(lines))
        stream.flush()
        return [None] * len(events)

    async def close(self) -> None:
        return None


# One round trip per batch, executed atomically by Redis. For each event in
# order: XADD it to its stream, unless an earlier event of the same aggregate
# failed in this call (then it is skipped, which keeps per-aggregate order).
# redis.pcall turns an XADD error (OOM, WRONGTYPE, ...) into a value, so one
# failing stream does not stop the others.
#   KEYS[i]  the stream of event i
#   ARGV[1]  MAXLEN for approximate trimming; 0 means no trimming
#   ARGV[2 + 6 * (i - 1) ...]  id, type, aggregate_type, aggregate_id, occurred_at, payload
# Returns per event: the new entry id, "SKIP", or "ERR <message>".
XADD_BATCH_LUA = """
local maxlen = tonumber(ARGV[1])
local results = {}
local failed = {}
for i, stream in ipairs(KEYS) do
    local at = 2 + (i - 1) * 6
    local aggregate = ARGV[at + 2] .. '/' .. ARGV[at + 3]
    if failed[aggregate] then
        results[i] = 'SKIP'
    else
        local fields = {'id', ARGV[at], 'type', ARGV[at + 1], 'aggregate_type', ARGV[at + 2],
                        'aggregate_id', ARGV[at + 3], 'occurred_at', ARGV[at + 4],
                        'payload', ARGV[at + 5]}
        local reply
        if maxlen > 0 then
            reply = redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(fields))
        else
            reply = redis.pcall('XADD', stream, '*', unpack(fields))
        end
        if type(reply) == 'table' and reply.err then
            failed[aggregate] = true
            results[i] = 'ERR ' .. reply.err
        else
            results[i] = reply
        end
    end
end
return results
"""

# Failures that mean "Redis is not there right now", not "this event is bad".
REDIS_UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    OSError,
)


class RedisStreamPublisher:
    """Redis Streams, one stream per aggregate type (see the module docstring).

    A batch is one EVALSHA of :data:`XADD_BATCH_LUA`. Stream keys differ per
    aggregate type, so on Redis Cluster give the prefix a hash tag (e.g.
    ``{flowforge}:events``) to keep them in one slot.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        prefix: str,
        maxlen: int = 0,
        *,
        connect_timeout: float = 5.0,
        timeout: float = 10.0,
    ) -> None:
        self.prefix = prefix
        self.maxlen = maxlen
        self.client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
            health_check_interval=30,
        )
        self._script = self.client.register_script(XADD_BATCH_LUA)

    def stream(self, aggregate_type: str) -> str:
        return f"{self.prefix}:{aggregate_type}"

    async def publish(self, events: Sequence[OutboxEvent]) -> Sequence[PublishOutcome]:
        if not events:
            return []
        keys = [self.stream(event.aggregate_type) for event in events]
        args: list[Any] = [self.maxlen]
        for event in events:
            message = event.message()
            args.extend(
                (
                    message["id"],
                    message["type"],
                    message["aggregate_type"],
                    message["aggregate_id"],
                    message["occurred_at"],
                    message["payload"],
                )
            )
        try:
            replies = await self._script(keys=keys, args=args)
        except REDIS_UNAVAILABLE as error:
            raise BrokerUnavailableError(f"redis: {type(error).__name__}: {error}") from error
        return [_outcome(reply) for reply in replies]

    async def close(self) -> None:
        await self.client.aclose()


def _outcome(reply: Any) -> PublishOutcome:
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    if text == "SKIP":
        return NOT_ATTEMPTED
    if text.startswith("ERR "):
        return PublishFailure(f"redis: {text[4:]}")
    return None


def create_publisher(settings: Settings) -> Publisher:
    """The publisher ``OUTBOX_PUBLISHER`` names."""
    if settings.outbox_publisher is PublisherKind.REDIS:
        return RedisStreamPublisher(
            settings.redis_url,
            settings.redis_stream_prefix,
            settings.redis_stream_maxlen,
            connect_timeout=settings.connect_timeout,
        )
    return LogPublisher()
