"""A database restart, as the relay sees it (through a proxy that drops and refuses
connections): the relay and its LISTEN connection both come back by themselves."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from flowforge.db.engine import DB
from flowforge.relay.listener import OutboxListener
from flowforge.relay.publishers import RedisStreamPublisher
from flowforge.relay.relay import Relay
from tests import relay_support as rs
from tests import support
from tests.tcp_proxy import TcpProxy
from tests.test_engine_faults import through_proxy, upstream_of

pytestmark = pytest.mark.usefixtures("db")


async def _all_published() -> bool:
    return await rs.unpublished() == 0


async def test_relay_and_listener_recover_from_a_database_restart(
    database_url: str, redis_prefix: str
) -> None:
    proxy = TcpProxy(upstream_of(database_url))
    await proxy.start()
    proxy_url = through_proxy(database_url, proxy.port)
    publisher = RedisStreamPublisher(rs.REDIS_URL, redis_prefix)
    try:
        async with support.global_engine_on(proxy_url):
            await DB.start_connection_pool()
            settings = rs.relay_settings(
                redis_prefix,
                database_url=proxy_url,
                relay_listen=True,
                relay_poll_min_interval=0.05,
                relay_poll_max_interval=30,
            )
            relay = Relay(settings, publisher)
            listener = relay.listener
            assert listener is not None
            async with rs.running(relay):
                await asyncio.wait_for(listener.connected.wait(), 10)
                await rs.insert_event(uuid.uuid4())
                await rs.wait_for(_all_published, within=10)

                # The "restart": every connection drops, new ones are refused for a while.
                await proxy.stop()
                await rs.wait_for(_listener_down(listener), within=10)
                refused = listener.failed_connects
                await rs.wait_for(_refused_again(listener, refused + 2), within=15)
                await proxy.start()

                await rs.wait_for(_listener_back(listener), within=15)
                # Events written after the restart are published.
                await rs.insert_event(uuid.uuid4())
                await rs.wait_for(_all_published, within=15)
                # Idle long enough that polling sleeps for seconds: NOTIFY must wake it.
                await rs.wait_for(_idle_for_seconds(relay), within=15)
                woken, polls = relay.stats.woken, relay.stats.polls
                await rs.insert_event(uuid.uuid4())
                await rs.wait_for(_all_published, within=15)
                # The long idle wait ended early (a notification), not by a poll.
                assert relay.stats.woken > woken
                assert relay.stats.polls == polls
            assert listener.reconnects >= 1
            assert relay.stats.published == 3
    finally:
        await publisher.close()
        await proxy.stop()


def _refused_again(listener: OutboxListener, attempts: int) -> object:
    async def check() -> bool:
        return listener.failed_connects >= attempts

    return check


def _idle_for_seconds(relay: Relay) -> object:
    async def check() -> bool:
        return relay.idle.is_set() and relay.idle_delay >= 1.6

    return check


def _listener_down(listener: OutboxListener) -> object:
    async def check() -> bool:
        return not listener.connected.is_set()

    return check


def _listener_back(listener: OutboxListener) -> object:
    async def check() -> bool:
        return listener.connected.is_set() and listener.reconnects >= 1

    return check


async def test_the_listener_retries_while_the_database_refuses_connections() -> None:
    settings = rs.relay_settings(
        database_url="postgresql://postgres@127.0.0.1:1/nowhere",
        relay_listen=True,
        connect_timeout=1,
    )
    wake, stop = asyncio.Event(), asyncio.Event()
    listener = OutboxListener(settings, wake)
    task = asyncio.create_task(listener.run(stop))
    # Several refused attempts, with back-off.
    await rs.wait_for(_refused_again(listener, 2), within=15)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert not listener.connected.is_set()
    assert not wake.is_set()
