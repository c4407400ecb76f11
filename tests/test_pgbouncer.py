"""FlowForge behind a real PgBouncer in transaction mode (DATABASE_POOLER=transaction).

What a transaction pooler takes away, and what the engine does instead:
startup parameters (timeouts become SET LOCAL at every BEGIN), prepared
statements across transactions (asyncpg's cache is off), session state
(nothing is SET for the session), LISTEN (the relay listens on its own direct
connection). Each test below fails if one of these comes back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from flowforge.core.settings import PoolerMode, Settings
from flowforge.db.engine import FlowForgeEngine, asyncpg_config
from flowforge.relay.listener import CHANNEL, OutboxListener, listen_database_url
from tests.conftest import Bouncer


def pooled_settings(bouncer: Bouncer, **overrides: object) -> Settings:
    options: dict[str, object] = {
        "database_url": bouncer.url,
        "database_pooler": PoolerMode.TRANSACTION,
        "pool_min_size": 1,
        "pool_max_size": 8,
        "relay_listen_database_url": None,
        **overrides,
    }
    return Settings(**options)  # type: ignore[arg-type]


@pytest.fixture
async def engine(bouncer: Bouncer, db: None) -> AsyncIterator[FlowForgeEngine]:
    """An engine of its own, through PgBouncer, with a 1 s statement timeout."""
    engine = FlowForgeEngine(pooled_settings(bouncer, statement_timeout=1.0))
    await engine.start_connection_pool()
    try:
        yield engine
    finally:
        await engine.close_connection_pool()


def test_pooler_mode_sends_no_session_settings(bouncer: Bouncer) -> None:
    config = asyncpg_config(pooled_settings(bouncer))
    assert config["statement_cache_size"] == 0
    assert set(config["server_settings"]) == {"application_name"}
    direct = asyncpg_config(
        Settings(database_url=bouncer.direct_url, database_pooler=PoolerMode.NONE)
    )
    assert direct["statement_cache_size"] == 100
    assert "statement_timeout" in direct["server_settings"]


async def test_pgbouncer_refuses_the_direct_configuration(bouncer: Bouncer) -> None:
    """Why the pooler mode exists: the direct mode's startup parameters are refused."""
    config = asyncpg_config(Settings(database_url=bouncer.url, database_pooler=PoolerMode.NONE))
    with pytest.raises(asyncpg.PostgresError, match="unsupported startup parameter"):
        await asyncpg.connect(**config)


@pytest.mark.parametrize("in_transaction", [True, False])
async def test_runaway_query_is_cancelled_through_pgbouncer(
    engine: FlowForgeEngine, in_transaction: bool
) -> None:
    async def runaway() -> None:
        if in_transaction:
            async with engine.transaction():
                await engine.fetch("SELECT pg_sleep(30)")
        else:
            await engine.fetch("SELECT pg_sleep(30)")

    started = time.monotonic()
    with pytest.raises(asyncpg.QueryCanceledError, match="statement timeout"):
        await runaway()
    # Cancelled by the server at 1 s, well before the client backstop (6 s).
    assert time.monotonic() - started < 5
    # The pooled connection is healthy afterwards (no aborted transaction left).
    assert (await engine.fetch("SELECT 1 AS one"))[0]["one"] == 1


async def test_idle_in_transaction_limit_holds_through_pgbouncer(engine: FlowForgeEngine) -> None:
    async with engine.transaction():
        rows = await engine.fetch(
            "SELECT current_setting('statement_timeout') AS st, "
            "current_setting('idle_in_transaction_session_timeout') AS idle, "
            "current_setting('jit') AS jit"
        )
    assert rows[0]["st"] == "1s"
    assert rows[0]["idle"] == "31s"
    assert rows[0]["jit"] == "off"  # FlowForge's statements are never JIT-compiled


async def test_extra_session_settings_become_set_local_behind_pgbouncer(
    bouncer: Bouncer, db: None
) -> None:
    """The relay's lock_timeout (flowforge/commands/operations.py) is a startup parameter when direct."""
    engine = FlowForgeEngine(pooled_settings(bouncer))
    await engine.start_connection_pool(
        server_settings={"application_name": "flowforge-relay", "lock_timeout": "5000"}
    )
    try:
        async with engine.transaction():
            rows = await engine.fetch(
                "SELECT current_setting('lock_timeout') AS lock, "
                "current_setting('application_name') AS name"
            )
    finally:
        await engine.close_connection_pool()
    assert rows[0]["lock"] == "5s"
    assert rows[0]["name"] == "flowforge-relay"


async def test_settings_do_not_leak_into_pgbouncers_server_connections(
    engine: FlowForgeEngine, bouncer: Bouncer
) -> None:
    """SET LOCAL ends with its transaction: other clients of the same server
    connections see the server's defaults."""

    async def one_transaction() -> None:
        async with engine.transaction():
            await engine.fetch("SELECT pg_sleep(0.01)")

    await asyncio.gather(*(one_transaction() for _ in range(40)))
    other = await asyncpg.connect(bouncer.url, statement_cache_size=0)
    try:
        for _ in range(40):
            assert await other.fetchval("SHOW statement_timeout") == "0"
    finally:
        await other.close()


async def test_relay_listen_uses_its_direct_connection(bouncer: Bouncer, db: None) -> None:
    without = pooled_settings(bouncer)
    assert listen_database_url(without) is None  # never LISTEN through the pooler
    settings = pooled_settings(bouncer, relay_listen_database_url=bouncer.direct_url)
    assert listen_database_url(settings) == bouncer.direct_url
    wake, stop = asyncio.Event(), asyncio.Event()
    listener = OutboxListener(settings, wake)
    task = asyncio.create_task(listener.run(stop))
    try:
        await asyncio.wait_for(listener.connected.wait(), 10)
        wake.clear()
        engine = FlowForgeEngine(settings)
        async with engine.transaction():  # a NOTIFY sent through PgBouncer
            await engine.fetch("SELECT pg_notify($1, 'x')", CHANNEL)
        await asyncio.wait_for(wake.wait(), 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_many_concurrent_requests_through_pgbouncer(bouncer: Bouncer, db: None) -> None:
    """The failure the issue measured (74 of 120 GETs were 500s): none now."""
    from flowforge.api.app import create_app
    from flowforge.db.engine import DB
    from flowforge.db.tables import Role
    from tests.api.conftest import WORKFLOW_BODY, make_caller
    from tests.support import global_engine_on

    async with global_engine_on(bouncer.url, DATABASE_POOLER="transaction"):
        caller = await make_caller("pool@example.com", Role.ADMIN)
        assert DB.behind_pooler
        app = create_app()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            created = await client.post(
                "/api/v1/workflows", json=WORKFLOW_BODY, headers=caller.headers
            )
            assert created.status_code == 201, created.text
            workflow_id = created.json()["id"]

            async def get(path: str) -> int:
                response = await client.get(path, headers=caller.headers)
                return response.status_code

            paths = ["/api/v1/workflows", f"/api/v1/workflows/{workflow_id}"] * 75
            statuses = await asyncio.gather(*(get(path) for path in paths))
    assert statuses.count(200) == len(paths), sorted(set(statuses))
