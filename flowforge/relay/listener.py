"""LISTEN for new outbox rows on a dedicated connection, and keep it alive.

The ``outbox_notify`` trigger sends ``NOTIFY flowforge_outbox`` when an
INSERT into outbox commits. A notification is only a hint that wakes an idle
relay early: the relay also polls, so a lost notification (connection down,
a transaction-mode pooler in between) only delays publishing until the next
poll, never loses an event.

The connection is a plain asyncpg connection, not a pooled one: a pool would
hand it to other work and drop the LISTEN with it. When it dies (database
restart, terminated backend, network failure found by the periodic ping) the
listener reconnects with back-off and wakes the relay once, since
notifications sent while it was away are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg

from flowforge.core.logs import describe_error, get_logger
from flowforge.core.settings import PoolerMode, Settings
from flowforge.db.engine import asyncpg_config, database_url
from flowforge.db.sql.relay import PING

logger = get_logger("flowforge.relay")

CHANNEL = "flowforge_outbox"
# A silent network failure does not close a socket: ping this often to find it.
PING_INTERVAL_SECONDS = 30.0


def listen_database_url(settings: Settings) -> str | None:
    """Where to LISTEN: a direct connection, never through a transaction pooler.

    ``RELAY_LISTEN_DATABASE_URL``, else ``DATABASE_URL`` when it is direct;
    None behind a transaction pooler without one (a LISTEN there would sit on
    a server connection that other clients' NOTIFYs never reach reliably).
    """
    if settings.relay_listen_database_url is not None:
        return settings.relay_listen_database_url
    if settings.database_pooler is PoolerMode.TRANSACTION:
        return None
    return database_url(settings)


class OutboxListener:
    """Sets `wake` on every notification; reconnects until `stop` is set."""

    def __init__(self, settings: Settings, wake: asyncio.Event) -> None:
        self._settings = settings
        self._wake = wake
        self.connection: Any = None
        self.connected = asyncio.Event()  # for tests and status: listening right now
        self.reconnects = 0
        self.failed_connects = 0  # attempts refused so far (for tests and status)

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _connect(self) -> Any:
        config = asyncpg_config(
            self._settings, dsn=listen_database_url(self._settings), pooler=PoolerMode.NONE
        )
        config["server_settings"] = {
            **config["server_settings"],
            "application_name": "flowforge-relay-listener",
        }
        connection = await asyncpg.connect(**config)
        try:
            await connection.add_listener(CHANNEL, self._notified)
        except BaseException:
            connection.terminate()
            raise
        return connection

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until `stop` is set, reconnecting whenever the connection is lost."""
        delay = 0.5
        first = True
        while not stop.is_set():
            try:
                self.connection = await self._connect()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                self.failed_connects += 1
                logger.warning("relay.listen_failed", error=describe_error(error))
                await _wait(stop, delay)
                delay = min(delay * 2, self._settings.relay_poll_max_interval * 2, 30.0)
                continue
            delay = 0.5
            lost = asyncio.Event()
            self.connection.add_termination_listener(_setter(lost))
            self.connected.set()
            if not first:
                self.reconnects += 1
                # Notifications sent while we were away are lost: look now.
                self._wake.set()
            logger.info("relay.listening", channel=CHANNEL, reconnected=not first)
            first = False
            await self._watch(stop, lost)
            self.connected.clear()
            await self._close()
            if not stop.is_set():
                logger.warning("relay.listener_lost", channel=CHANNEL)

    async def _watch(self, stop: asyncio.Event, lost: asyncio.Event) -> None:
        """Return when `stop` or `lost` is set, or a ping fails."""
        while not (stop.is_set() or lost.is_set()):
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())]
            try:
                await asyncio.wait(
                    waiters, timeout=PING_INTERVAL_SECONDS, return_when="FIRST_COMPLETED"
                )
            finally:
                for waiter in waiters:
                    waiter.cancel()
            if stop.is_set() or lost.is_set() or self.connection.is_closed():
                return
            try:
                await asyncio.wait_for(
                    self.connection.fetchval(PING), self._settings.connect_timeout
                )
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return

    async def _close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is None or connection.is_closed():
            return
        try:
            await asyncio.wait_for(connection.close(), self._settings.connect_timeout)
        except Exception:
            connection.terminate()


def _setter(event: asyncio.Event) -> Callable[[Any], None]:
    def set_event(_connection: Any) -> None:
        event.set()

    return set_event


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
