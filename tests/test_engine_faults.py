"""The engine under faults, against a real PostgreSQL (no mocks of the database).

Each fault is produced for real: a deferred constraint that fails at COMMIT, a
backend killed with ``pg_terminate_backend``, a pool held to its limit, and a
TCP proxy (tests/tcp_proxy.py) in front of the server that refuses and resets
connections. Every wait is bounded (``asyncio.timeout``), so a regression that
hangs fails the test instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from piccolo.table import Table

from flowforge.api.app import create_app
from flowforge.api.deps import Transaction
from flowforge.api.errors import status_for
from flowforge.core.errors import CONNECTION_ERRORS, DatabaseUnavailableError, translate_db_error
from flowforge.core.settings import Settings, get_settings
from flowforge.db.engine import DB, FlowForgeEngine, PoolTimeoutError
from tests import support
from tests.tcp_proxy import TcpProxy

# What a caller may see while the database is unreachable: a domain error, or a
# driver connection error that the API translates to 503.
UNAVAILABLE = (DatabaseUnavailableError, *CONNECTION_ERRORS)

SMALL_POOL: dict[str, Any] = {
    "pool_min_size": 1,
    "pool_max_size": 2,
    "pool_acquire_timeout": 2.0,
    "connect_timeout": 2.0,
    "statement_timeout": 10.0,
}

# A COMMIT that fails: the unique check is deferred to COMMIT, so the body runs
# to its end and the duplicate is only detected by the COMMIT itself.
DEFERRED_TABLE = (
    "CREATE TEMP TABLE deferred_probe (x int UNIQUE DEFERRABLE INITIALLY DEFERRED) ON COMMIT DROP"
)
DEFERRED_DUPLICATE = "INSERT INTO deferred_probe VALUES (1), (1)"


def engine_settings(url: str, **fields: Any) -> Settings:
    """Settings with explicit values, checked to have taken effect.

    ``Settings`` takes init arguments by their environment names and ignores
    unknown ones: ``Settings(pool_max_size=2)`` silently keeps the default of 20.
    """
    aliases = {name: Settings.model_fields[name].validation_alias for name in fields}
    settings = Settings(DATABASE_URL=url, **{aliases[name]: v for name, v in fields.items()})
    for name, value in fields.items():
        assert getattr(settings, name) == value, f"setting {name} did not take effect"
    return settings


def upstream_of(url: str) -> tuple[str, int] | str:
    """The server a PostgreSQL URL points at: (host, port), or a unix socket path."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    host = parts.hostname or query.get("host")
    port = parts.port or int(query.get("port", 5432))
    if host is None or host.startswith("/"):
        return f"{host or '/var/run/postgresql'}/.s.PGSQL.{port}"
    return (host, port)


def through_proxy(url: str, port: int) -> str:
    """`url` with its server replaced by 127.0.0.1:`port` (same user and database)."""
    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    query = [(key, value) for key, value in parse_qsl(parts.query) if key not in {"host", "port"}]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))


async def wait_until(predicate: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    try:
        async with asyncio.timeout(within):
            while not await predicate():  # noqa: ASYNC110 - polls another system
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"{what} did not happen within {within:g}s")


async def select_one(engine: FlowForgeEngine) -> int:
    rows = await engine.fetch("SELECT 1 AS one")
    return int(rows[0]["one"])


async def answers(engine: FlowForgeEngine) -> bool:
    try:
        return await select_one(engine) == 1
    except UNAVAILABLE:
        return False


def probe_table(engine: FlowForgeEngine) -> type[Table]:
    """A Table bound to `engine`: queries through Piccolo's own query path."""

    class Probe(Table, db=engine):
        pass

    return Probe


async def terminate_backend(database_url: str, pid: int) -> None:
    """Kill a server process from outside, and wait until it is gone."""
    connection = await asyncpg.connect(database_url)
    try:
        assert await connection.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
    finally:
        await connection.close()


@pytest.fixture
async def make_engine(database_url: str) -> AsyncIterator[Callable[..., FlowForgeEngine]]:
    """Dedicated engines with explicit settings (not the global DB), closed afterwards."""
    engines: list[FlowForgeEngine] = []

    def make(url: str | None = None, **fields: Any) -> FlowForgeEngine:
        engine = FlowForgeEngine(engine_settings(url or database_url, **{**SMALL_POOL, **fields}))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        async with asyncio.timeout(15):
            await engine.close_connection_pool()


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[TcpProxy]:
    """A proxy to the test database's server, on a port of its own, initially DOWN."""
    tcp_proxy = TcpProxy(upstream_of(database_url))
    await tcp_proxy.start()  # pick the port
    await tcp_proxy.stop()
    yield tcp_proxy
    await tcp_proxy.stop()


# --- 1. A failed COMMIT ---------------------------------------------------------


async def commit_a_deferred_duplicate(engine: FlowForgeEngine, progress: list[str]) -> None:
    async with engine.transaction():
        await engine.fetch(DEFERRED_TABLE)
        await engine.fetch(DEFERRED_DUPLICATE)
        progress.append("body finished")


async def fail_at_commit(engine: FlowForgeEngine) -> None:
    progress: list[str] = []
    with pytest.raises(asyncpg.UniqueViolationError) as caught:
        await commit_a_deferred_duplicate(engine, progress)
    # The body ran to its end: the error came from the COMMIT, and surfaced.
    assert progress == ["body finished"]
    assert caught.value.constraint_name == "deferred_probe_x_key"
    assert engine.current_transaction.get() is None


async def test_a_failed_commit_raises_and_gives_its_connection_back(
    make_engine: Callable[..., FlowForgeEngine],
) -> None:
    engine = make_engine(pool_max_size=2)
    await engine.start_connection_pool()
    max_size = engine.settings.pool_max_size

    # More failed COMMITs than the pool has connections: with a leak (Piccolo's
    # PostgresTransaction) the pool is empty after `max_size` of them.
    async with asyncio.timeout(15):
        for _ in range(max_size + 1):
            await fail_at_commit(engine)

    async with asyncio.timeout(10):
        assert await select_one(engine) == 1
        # Every slot of the pool is free again: all of them can be held at once.
        held = [await engine.acquire() for _ in range(max_size)]
        for connection in held:
            await engine.release(connection)
        async with engine.transaction():
            await engine.fetch("CREATE TEMP TABLE committed_probe (x int) ON COMMIT DROP")
        assert engine.current_transaction.get() is None

    async with asyncio.timeout(5):  # pool.close() waits for every connection back
        await engine.close_connection_pool()
    assert engine.pool is None


async def test_a_failed_commit_in_a_request_is_an_error_response_not_200(db: None) -> None:
    """The request's COMMIT runs before the response (scope="function")."""
    app = create_app()

    @app.post("/_probe/deferred-commit")
    async def deferred_commit(transaction: Transaction) -> dict[str, bool]:
        await DB.fetch(DEFERRED_TABLE)
        await DB.fetch(DEFERRED_DUPLICATE)
        return {"saved": True}

    transport = httpx.ASGITransport(app=app)
    async with (
        asyncio.timeout(15),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        for _ in range(DB.settings.pool_max_size + 1):
            response = await client.post("/_probe/deferred-commit")
            assert response.status_code == 409, response.text
            assert response.json()["error"]["code"] == "conflict"
        assert await select_one(DB) == 1


# --- 2. The connection dies inside a transaction ---------------------------------


class BodyError(Exception):
    """The application's own error inside the transaction."""


async def kill_inside_transaction(
    engine: FlowForgeEngine, database_url: str, failure: str, seen: dict[str, Any]
) -> None:
    """Kill the transaction's backend, then fail in the body; record what the body raised."""
    async with engine.transaction():
        seen["pid"] = (await engine.fetch("SELECT pg_backend_pid() AS pid"))[0]["pid"]
        await terminate_backend(database_url, seen["pid"])
        try:
            if failure == "application error":
                raise BodyError("the body failed")
            await engine.fetch("SELECT 1")
        except BaseException as error:
            seen["body_error"] = error
            raise
        pytest.fail("a query on a terminated backend succeeded")


@pytest.mark.parametrize("failure", ["application error", "query on the dead connection"])
async def test_a_connection_killed_mid_transaction_leaves_the_task_usable(
    make_engine: Callable[..., FlowForgeEngine],
    database_url: str,
    caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:
    engine = make_engine()
    await engine.start_connection_pool()

    probe = probe_table(engine)
    seen: dict[str, Any] = {}
    async with asyncio.timeout(15):
        with pytest.raises(Exception) as caught:  # noqa: PT011 - identity checked below
            await kill_inside_transaction(engine, database_url, failure, seen)

    # The body's exception propagates, not the ROLLBACK's (which did fail).
    assert caught.value is seen["body_error"]
    if failure == "query on the dead connection":
        assert isinstance(caught.value, UNAVAILABLE), repr(caught.value)
    assert "rollback failed" in caplog.text
    # The task no longer points at the dead connection...
    assert engine.current_transaction.get() is None

    # ...so later queries in this same task work at once, with no retry: the
    # raw path, Piccolo's query path, and a new transaction.
    async with asyncio.timeout(10):
        assert await select_one(engine) == 1
        assert await probe.raw("SELECT 2 AS two") == [{"two": 2}]
        async with engine.transaction() as transaction:
            assert engine.current_transaction.get() is transaction
            assert (await engine.fetch("SELECT pg_backend_pid() AS pid"))[0]["pid"] != seen["pid"]
        assert engine.current_transaction.get() is None
        await engine.close_connection_pool()


# --- 3. The pool is exhausted ------------------------------------------------------


async def test_a_full_pool_times_out_with_pool_timeout_error(
    make_engine: Callable[..., FlowForgeEngine],
) -> None:
    engine = make_engine(pool_max_size=1, pool_acquire_timeout=0.5)
    await engine.start_connection_pool()
    loop = asyncio.get_running_loop()

    held = await engine.acquire()
    try:
        async with asyncio.timeout(15):  # generous: only proves it does not hang
            started = loop.time()
            with pytest.raises(PoolTimeoutError) as caught:
                await engine.acquire()
            assert loop.time() - started >= 0.4  # it waited, it did not fail at once
            with pytest.raises(PoolTimeoutError):
                await engine.fetch("SELECT 1")
            with pytest.raises(PoolTimeoutError):
                await probe_table(engine).raw("SELECT 1")
            with pytest.raises(PoolTimeoutError):
                async with engine.transaction():
                    pytest.fail("a transaction started on a full pool")
    finally:
        await engine.release(held)

    error = caught.value
    assert isinstance(error, DatabaseUnavailableError)
    assert translate_db_error(error) is error
    assert status_for(error) == 503
    assert engine.current_transaction.get() is None

    # The timed-out waiters took nothing: the one connection is free again, and a
    # waiter does get a connection released within the timeout.
    async with asyncio.timeout(10):
        assert await select_one(engine) == 1
        held = await engine.acquire()

        async def release_soon() -> None:
            await asyncio.sleep(0.1)
            await engine.release(held)

        releaser = asyncio.create_task(release_soon())
        waiter = await engine.acquire()
        await releaser
        await engine.release(waiter)


# --- 4. The database is down at start-up, comes back, goes away, comes back -----------


async def test_the_engine_starts_without_the_database_and_follows_it(
    make_engine: Callable[..., FlowForgeEngine], database_url: str, proxy: TcpProxy
) -> None:
    engine = make_engine(through_proxy(database_url, proxy.port))
    max_size = engine.settings.pool_max_size

    async with asyncio.timeout(10):
        await engine.start_connection_pool()  # the database is down: no error
        assert engine.pool is None
        accepted = proxy.accepted
        # Until the pool exists, queries fail fast, without opening connections.
        for _ in range(3):
            with pytest.raises(DatabaseUnavailableError):
                await engine.fetch("SELECT 1")
        with pytest.raises(DatabaseUnavailableError):
            async with engine.transaction():
                pytest.fail("a transaction started without a database")

    await proxy.start()
    assert proxy.accepted == accepted
    await wait_until(lambda: answers(engine), 10, "the pool starting once the database is back")
    assert engine.pool is not None

    # The database goes away (listener closed, open connections reset).
    await proxy.stop()
    async with asyncio.timeout(15):
        for _ in range(max_size + 1):
            with pytest.raises(UNAVAILABLE) as caught:
                await engine.fetch("SELECT 1")
            assert isinstance(translate_db_error(caught.value), DatabaseUnavailableError)
        with pytest.raises(UNAVAILABLE):
            async with engine.transaction():
                await engine.fetch("SELECT 1")
        assert engine.current_transaction.get() is None

    # It comes back: each dead pooled connection may fail once, then it works.
    await proxy.start()
    failures = 0
    async with asyncio.timeout(15):
        while not await answers(engine):
            failures += 1
            await asyncio.sleep(0.05)
        assert failures <= max_size + 1
        for _ in range(5):
            assert await select_one(engine) == 1
        async with engine.transaction():
            assert await select_one(engine) == 1
        await engine.close_connection_pool()


async def test_the_background_start_survives_a_database_that_is_not_there_yet(
    make_engine: Callable[..., FlowForgeEngine],
    database_url: str,
    proxy: TcpProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server comes back before the app's database exists (a restore, a
    provisioning step): the first answer is not a connection error."""
    name = support.database_name("late")
    await support.drop_database(name)
    engine = make_engine(through_proxy(support.with_database(database_url, name), proxy.port))
    try:
        async with asyncio.timeout(20):
            await engine.start_connection_pool()
            assert engine.pool is None
            await proxy.start()
            # The background start logs the answer and keeps trying (it must not
            # die on it: the engine would say "not reachable yet" forever).
            await wait_until(
                lambda: asyncio.sleep(0, "does not exist" in caplog.text),
                10,
                "the background start reporting 'database ... does not exist'",
            )
            with pytest.raises(DatabaseUnavailableError):
                await engine.fetch("SELECT 1")

            await support.create_database(name)
            await wait_until(lambda: answers(engine), 10, "the pool starting once the db exists")
            await engine.close_connection_pool()  # and shutting down does not raise
    finally:
        async with asyncio.timeout(15):
            await engine.close_connection_pool()
        await support.drop_database(name)


async def test_dropped_connections_fail_fast_and_the_pool_recovers(
    make_engine: Callable[..., FlowForgeEngine], database_url: str, proxy: TcpProxy
) -> None:
    await proxy.start()
    engine = make_engine(through_proxy(database_url, proxy.port), pool_max_size=2)
    await engine.start_connection_pool()
    max_size = engine.settings.pool_max_size

    async with asyncio.timeout(15):
        # Open every pooled connection.
        held = [await engine.acquire() for _ in range(max_size)]
        for connection in held:
            await engine.release(connection)

        # The network drops under a running statement: it fails now, not when
        # the statement would have ended (pg_sleep(60) > the whole guard).
        query = asyncio.ensure_future(engine.fetch("SELECT pg_sleep(60)"))
        await asyncio.sleep(0.3)
        assert not query.done()
        proxy.reset_connections()
        with pytest.raises(UNAVAILABLE):
            await query

        # Idle pooled connections were reset too: a bounded number of attempts
        # (at most one per pooled connection) clears them.
        failures = 0
        while not await answers(engine):
            failures += 1
        assert failures <= max_size + 1
        assert await select_one(engine) == 1
        async with engine.transaction():
            assert await select_one(engine) == 1


# --- 5. Readiness through the real app -----------------------------------------------


@pytest.fixture
async def global_db_through_proxy(database_url: str, proxy: TcpProxy) -> AsyncIterator[TcpProxy]:
    """Point the process-wide DB (via settings) at the proxy; restore everything after."""
    overrides = {
        "DATABASE_URL": through_proxy(database_url, proxy.port),
        "DB_POOL_MIN_SIZE": "1",
        "DB_POOL_MAX_SIZE": "2",
        "DB_POOL_ACQUIRE_TIMEOUT": "2",
        "DB_CONNECT_TIMEOUT": "2",
    }
    saved = {name: os.environ.get(name) for name in overrides}
    async with asyncio.timeout(15):
        await DB.close_connection_pool()
    os.environ.update(overrides)
    get_settings.cache_clear()
    DB.reconfigure()
    try:
        yield proxy
    finally:
        async with asyncio.timeout(15):
            await DB.close_connection_pool()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()
        DB.reconfigure()
        assert DB.settings.database_url == database_url


async def test_readiness_follows_the_database_without_restarting_the_app(
    global_db_through_proxy: TcpProxy,
) -> None:
    proxy = global_db_through_proxy
    app = create_app()
    transport = httpx.ASGITransport(app=app)

    async def ready() -> bool:
        response = await client.get("/readyz")
        return response.status_code == 200

    async def assert_down() -> None:
        response = await client.get("/readyz")
        assert response.status_code == 503
        body = response.json()
        assert list(body) == ["postgres"]
        assert body["postgres"].startswith("error: ")
        health = await client.get("/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})

    async with (
        asyncio.timeout(25),
        app.router.lifespan_context(app),  # starts while the database is down
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        assert DB.pool is None
        await assert_down()

        await proxy.start()
        await wait_until(ready, 10, "/readyz turning 200 once the database is back")
        response = await client.get("/readyz")
        assert (response.status_code, response.json()["postgres"]) == (200, "ok")

        await proxy.stop()
        await assert_down()

        await proxy.start()
        await wait_until(ready, 10, "/readyz turning 200 again")
        response = await client.get("/readyz")
        assert (response.status_code, response.json()["postgres"]) == (200, "ok")
