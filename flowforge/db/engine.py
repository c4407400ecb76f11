"""The one database engine: lazily configured, pooled, with transactions that never leak.

``piccolo_conf.DB`` is an instance of :class:`FlowForgeEngine`. It differs from
Piccolo's ``PostgresEngine`` in five deliberate ways:

* Construction touches nothing. The connection target is resolved from
  :func:`flowforge.core.settings.get_settings` on first use (``DATABASE_URL``, or the
  embedded server), so importing ``piccolo_conf`` never blocks on the network.
* Every pool acquire has a timeout (``DB_POOL_ACQUIRE_TIMEOUT``); Piccolo's waits
  forever on a full pool. A timeout is a :class:`PoolTimeoutError` (HTTP 503).
* :class:`SafeTransaction` always releases its connection and resets the
  current-transaction context, even when BEGIN, COMMIT or ROLLBACK fails.
  Piccolo's ``PostgresTransaction.__aexit__`` has no ``finally``: a failed COMMIT
  leaks the pooled connection, and a failed ROLLBACK leaves the task's later
  queries pointed at a dead connection (docs/decisions/13-piccolo-internals.md).
* Pool start never fails for a reason that can heal (server down, database
  not created yet, credentials not set yet): the app stays up, ``/readyz``
  reports 503 with the reason (:attr:`FlowForgeEngine.start_problem`), every
  query fails fast with :class:`DatabaseUnavailableError`, and the pool starts
  as soon as the database is usable.
* A connection given back to the pool is reset (asyncpg's
  ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``, one more round
  trip per request) only if it ran a statement that can leave session state
  (:class:`PooledConnection`, docs/decisions/06-connection-pool.md).

Reaching the connection (docs/decisions/01-orm-approach.md): every data function
runs in its caller's transaction. Builder queries find it through
``current_transaction``; compiled queries and raw statements use
``DB.require_transaction().connection``. Whoever calls opens it with
``async with DB.transaction():`` - the API's dependencies and probes, the
commands, the relay per batch, the multi-unit jobs per unit. :meth:`FlowForgeEngine.fetch`
(autocommit outside a transaction) is for tests and benchmarks;
tests/test_layers.py keeps it out of ``flowforge/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sys
from collections.abc import Callable
from typing import Any, LiteralString, cast

import asyncpg
from piccolo.engine.postgres import PostgresEngine, PostgresTransaction

from flowforge.core.errors import CONNECTION_ERRORS, DatabaseUnavailableError
from flowforge.core.logs import describe_error, get_logger
from flowforge.core.settings import PoolerMode, Settings, get_settings
from flowforge.db.sql.session import COMMIT, ROLLBACK, begin_statement, with_actor

logger = get_logger(__name__)


# Failures that mean "the pool could not close cleanly": terminate it instead.
CLOSE_ERRORS: tuple[type[Exception], ...] = (TimeoutError, *CONNECTION_ERRORS)


class PoolTimeoutError(DatabaseUnavailableError):
    """No database connection became free in time; try again shortly."""

    code = "pool_timeout"


NOT_REACHABLE_YET = "The database is not reachable yet; try again shortly."

# Start-up failures that can heal while the process waits: the server is not up
# yet (connection errors), or it answers but refuses for now (the database does
# not exist yet, the password is not set yet, too many connections, starting up:
# every server-side error). Anything else - a DSN asyncpg cannot parse - is a
# configuration error that no waiting fixes, and stops start-up.
HEALABLE_START_ERRORS: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, asyncpg.PostgresError)


def describe_start_error(error: Exception) -> str:
    """A short reason for /readyz and the log: the server's message, or the network error."""
    if isinstance(error, asyncpg.PostgresError):
        return str(error)
    return f"cannot connect: {str(error) or type(error).__name__}"


def database_url(settings: Settings) -> str:
    """The URL to connect to: ``DATABASE_URL``, or the embedded server's."""
    if settings.database_url is not None:
        return settings.database_url
    from flowforge.db import embedded

    return embedded.database_url(settings.data_dir)


# Startup parameters PgBouncer accepts and tracks; any other setting must be
# applied per transaction behind a transaction pooler.
STARTUP_PARAMETERS = frozenset({"application_name", "client_encoding", "DateStyle", "TimeZone"})


def session_settings(settings: Settings) -> dict[str, str]:
    """The server-side limits every FlowForge connection runs under."""
    return {
        "statement_timeout": str(int(settings.statement_timeout * 1000)),
        # Never sit idle inside a transaction holding locks (a stuck client).
        "idle_in_transaction_session_timeout": str(int((settings.statement_timeout + 30) * 1000)),
        # No JIT compilation: FlowForge's statements are short OLTP statements,
        # and a plan whose estimate crosses jit_above_cost (the claim's, once a
        # million runs are queued) spent ~50 ms compiling for ~5 ms of work,
        # halving claim throughput at that depth (docs/decisions/06-connection-pool.md).
        "jit": "off",
    }


def asyncpg_config(
    settings: Settings, *, dsn: str | None = None, pooler: PoolerMode | None = None
) -> dict[str, Any]:
    """Connection arguments for asyncpg, from settings.

    Directly connected, the limits are startup parameters (set once per
    connection). Behind a transaction pooler they cannot be (PgBouncer refuses
    unknown startup parameters, and a server connection serves many clients):
    the engine sets them with ``SET LOCAL`` at the start of every transaction
    (:meth:`FlowForgeEngine.begin_statement`), and prepared statements are not
    cached (the next statement may run on another server connection).
    """
    pooler = settings.database_pooler if pooler is None else pooler
    server_settings = {"application_name": "flowforge"}
    if pooler is PoolerMode.NONE:
        server_settings.update(session_settings(settings))
    return {
        "dsn": dsn or database_url(settings),
        "timeout": settings.connect_timeout,
        # The client-side backstop fires a little after the server-side limit,
        # so a slow statement is cancelled cleanly by the server first.
        "command_timeout": settings.statement_timeout + 5,
        "statement_cache_size": statement_cache_size(settings, pooler),
        "server_settings": server_settings,
    }


def statement_cache_size(settings: Settings, pooler: PoolerMode) -> int:
    """``DB_STATEMENT_CACHE_SIZE``, else asyncpg's 100, or 0 behind a transaction pooler."""
    if settings.statement_cache_size is not None:
        return settings.statement_cache_size
    return 0 if pooler is PoolerMode.TRANSACTION else 100


# Statements that can leave state in the session, past their transaction: what
# asyncpg's reset query (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
# RESET ALL`) undoes - session advisory locks, SQL cursors (WITH HOLD), LISTEN,
# session settings (a SET that is not SET LOCAL, set_config). Matched loosely:
# a false positive costs one reset on release, never correctness.
_SESSION_STATE = re.compile(
    r"""
    \b(?:LISTEN|DECLARE|pg_(?:try_)?advisory_lock(?:_shared)?|set_config)\b
    | (?:^|;)(?:\s+|--[^\n]*|/\*.*?\*/)*SET\b(?!\s+LOCAL\b)  # SET at a statement's start
    """,
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)
# set_config(name, value, true) is transaction-local, like SET LOCAL: it leaves
# nothing behind (the run_history actor is set this way by authentication, on
# every request). Only a call whose last argument is the literal true is
# exempt; its arguments may hold one level of parentheses (a function call).
_LOCAL_SET_CONFIG = re.compile(
    r"\bset_config\s*\((?:[^()]|\([^()]*\))*,\s*true\s*\)",
    re.IGNORECASE,
)


@functools.lru_cache(maxsize=1024)
def may_leave_session_state(query: str) -> bool:
    """True if `query` may leave state in the session (docs/decisions/06-connection-pool.md)."""
    return _SESSION_STATE.search(_LOCAL_SET_CONFIG.sub("", query)) is not None


def _noting_session_state(name: str) -> Callable[..., Any]:
    """Connection method `name`, marking the connection when its statement may leave state."""
    method = getattr(asyncpg.Connection, name)

    @functools.wraps(method)
    def noted(self: PooledConnection, query: str, *args: Any, **kwargs: Any) -> Any:
        if not self.carries_state and may_leave_session_state(query):
            self.carries_state = True
        return method(self, query, *args, **kwargs)

    return noted


class PooledConnection(asyncpg.Connection):
    """A pooled connection that is reset on release only if it can carry session state.

    asyncpg's pool resets every connection it gets back with one more round
    trip (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`). The
    engine's transactions leave nothing behind (``SET LOCAL`` ends with the
    transaction), so a connection is reset only after it ran a statement that
    may leave session state (:func:`may_leave_session_state`). An open
    transaction is rolled back on release either way: asyncpg checks the
    connection's transaction status before the reset query, without a round
    trip. State the reset query never undid (temporary tables, PREPARE) is
    out of scope, as before.
    """

    # Set by any statement that may leave session state; cleared by reset().
    carries_state = False

    execute = _noting_session_state("execute")
    executemany = _noting_session_state("executemany")
    fetch = _noting_session_state("fetch")
    fetchrow = _noting_session_state("fetchrow")
    fetchval = _noting_session_state("fetchval")
    fetchmany = _noting_session_state("fetchmany")
    prepare = _noting_session_state("prepare")
    cursor = _noting_session_state("cursor")

    def get_reset_query(self) -> str:
        return super().get_reset_query() if self.carries_state else ""

    async def reset(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109 - asyncpg's signature
        await super().reset(timeout=timeout)
        self.carries_state = False


class SafeTransaction(PostgresTransaction):
    """A Piccolo transaction that always gives its connection back.

    Nested use is a no-op returning the outer transaction (Piccolo's
    behaviour); use ``await tx.savepoint()`` for a partial rollback.
    """

    engine: FlowForgeEngine

    def __init__(
        self,
        engine: FlowForgeEngine,
        allow_nested: bool = True,
        source: FlowForgeEngine | None = None,
        actor: str | None = None,
    ) -> None:
        super().__init__(engine=engine, allow_nested=allow_nested)
        # Who acts (``api_key:<id>``), when known before BEGIN: set as the
        # transaction-local ``flowforge.actor`` in the BEGIN statement itself.
        self.actor = actor
        # Where the connection comes from: the engine itself, or a read
        # replica's engine (flowforge/db/replicas.py). Queries find the
        # transaction through `engine`'s context either way.
        self.source = source if source is not None else engine

    async def __aenter__(self) -> SafeTransaction:
        if self._parent is not None:
            return cast(SafeTransaction, self._parent)
        self.connection = await self.source.acquire()
        try:
            await self.begin()
        except BaseException:
            await self.source.release(self.connection, broken=True)
            raise
        self.context = self.engine.current_transaction.set(self)
        return self

    # BEGIN (with the per-transaction settings behind a pooler) is one simple
    # query, so a transaction costs no extra round trip for its timeouts.
    async def begin(self) -> None:
        statement = self.source.begin_statement
        if self.actor is not None:
            statement = with_actor(statement, self.actor)
        await self.connection.execute(statement)

    async def commit(self) -> None:
        await self.connection.execute(COMMIT)
        self._committed = True

    async def rollback(self) -> None:
        await self.connection.execute(ROLLBACK)
        self._rolled_back = True

    async def __aexit__(self, exception_type: Any, exception: Any, traceback: Any) -> bool:
        if self._parent is not None:
            return exception is None
        broken = False
        try:
            if exception is not None:
                if not self._rolled_back:
                    try:
                        await self.rollback()
                    except Exception as error:
                        # The original exception is the one that matters; the
                        # connection is discarded below.
                        broken = True
                        logger.warning(
                            "db.rollback_failed",
                            detail="rollback failed; discarding connection",
                            error=describe_error(error),
                        )
            elif not self._committed and not self._rolled_back:
                try:
                    await self.commit()
                except BaseException:
                    broken = True
                    raise
        finally:
            self.engine.current_transaction.reset(self.context)
            await self.source.release(self.connection, broken=broken)
        return exception is None


class FlowForgeEngine(PostgresEngine):
    """Piccolo's PostgresEngine, configured from settings on first use."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self._resolved_config: dict[str, Any] | None = None
        self._pool_starter: asyncio.Task[None] | None = None
        self._local_settings: dict[str, str] | None = None
        # Acquirers waiting for a pooled connection right now (a metric).
        self.acquire_waiting = 0
        # Why the pool is not started yet (for /readyz); None once it runs.
        self.start_problem: str | None = None
        super().__init__(config={}, extensions=())

    # Piccolo's Engine.__init__ connects to check the server version and create
    # extensions. We need no extension (gen_random_uuid is core since PG 13) and
    # check the version when the pool starts instead.
    async def check_version(self) -> None:
        return None

    async def prep_database(self) -> None:
        return None

    @property
    def settings(self) -> Settings:
        return self._settings if self._settings is not None else get_settings()

    @property
    def config(self) -> dict[str, Any]:
        if self._resolved_config is None:
            self._resolved_config = asyncpg_config(self.settings)
        return self._resolved_config

    @config.setter
    def config(self, value: dict[str, Any]) -> None:
        # Piccolo's __init__ assigns {}; an explicit non-empty config wins.
        self._resolved_config = value or None

    @property
    def behind_pooler(self) -> bool:
        return self.settings.database_pooler is PoolerMode.TRANSACTION

    @property
    def local_settings(self) -> dict[str, str]:
        """Settings applied with SET LOCAL in every transaction (behind a pooler only)."""
        if self._local_settings is None:
            self._local_settings = session_settings(self.settings) if self.behind_pooler else {}
        return self._local_settings

    @property
    def begin_statement(self) -> str:
        return begin_statement(self.local_settings)

    def reconfigure(self, settings: Settings | None = None) -> None:
        """Forget the resolved target; the next connection reads `settings` (or the env)."""
        if self.pool is not None or self._pool_starter is not None:
            raise RuntimeError("close the connection pool before reconfiguring the engine")
        self._settings = settings
        self._resolved_config = None
        self._local_settings = None

    def require_transaction(self) -> SafeTransaction:
        """The current transaction; RuntimeError if there is none.

        Domain operations that must be atomic with their caller's other
        writes (events, multi-row changes) call this instead of committing.
        """
        current = self.current_transaction.get()
        if current is None:
            raise RuntimeError("this operation must run inside DB.transaction()")
        return cast(SafeTransaction, current)

    def require_no_transaction(self, job: str) -> None:
        """RuntimeError if a transaction is open: for jobs that commit unit by unit.

        Inside a caller's transaction their ``DB.transaction()`` blocks would
        nest into it, and every batch would commit (or roll back) only at the end.
        """
        if self.current_transaction.get() is not None:
            raise RuntimeError(f"{job} commits batch by batch: call it outside a transaction")

    def transaction(
        self,
        allow_nested: bool = True,
        source: FlowForgeEngine | None = None,
        *,
        actor: str | None = None,
    ) -> SafeTransaction:
        """A transaction; `actor` (e.g. ``api_key:<id>``) is set as the transaction-local
        ``flowforge.actor`` by its BEGIN statement (no extra round trip)."""
        return SafeTransaction(engine=self, allow_nested=allow_nested, source=source, actor=actor)

    async def start_connection_pool(self, **kwargs: Any) -> None:
        """Create the pool sized by settings.

        If the database is unreachable, the process does not stop: the pool is
        created in the background as soon as the database answers, and until
        then every query fails fast with :class:`DatabaseUnavailableError`.
        """
        if self.pool is not None or self._pool_starter is not None:
            return
        settings = self.settings
        options: dict[str, Any] = {
            **self.config,
            "min_size": settings.pool_min_size,
            "max_size": settings.pool_max_size,
            "max_inactive_connection_lifetime": settings.pool_max_inactive_lifetime,
            # Reset on release only where a connection can carry state.
            "connection_class": PooledConnection,
            **kwargs,
        }
        if self.behind_pooler:
            # Extra session settings a caller asks for (the relay's lock_timeout)
            # cannot be startup parameters either: they join the SET LOCALs.
            startup = dict(options.get("server_settings") or {})
            local = {k: startup.pop(k) for k in list(startup) if k not in STARTUP_PARAMETERS}
            options["server_settings"] = startup
            self._local_settings = {**session_settings(settings), **local}
        try:
            self.pool = await asyncpg.create_pool(**options)
        except HEALABLE_START_ERRORS as error:
            self.start_problem = describe_start_error(error)
            logger.warning(
                "db.unusable_at_start",
                detail="the pool starts in the background once the database is usable",
                error=describe_error(error),
            )
            self._pool_starter = asyncio.create_task(self._create_pool_when_reachable(options))

    async def _create_pool_when_reachable(self, options: dict[str, Any]) -> None:
        # Every error is retried, not only connection errors: a server that comes
        # back can first answer "database does not exist" (still being restored
        # or created) or refuse the credentials. Had this task died, the engine
        # would report "not reachable yet" forever and the app never recover.
        delay = 0.5
        while self.pool is None:
            await asyncio.sleep(delay)
            try:
                self.pool = await asyncpg.create_pool(**options)
            except Exception as error:
                self.start_problem = describe_start_error(error)
                delay = min(delay * 2, 10.0)
                # One line per retry. Unreachable is expected while a server
                # starts; a server that answers and refuses (no such database,
                # bad password) gets an event of its own.
                logger.warning(
                    "db.still_unreachable"
                    if isinstance(error, CONNECTION_ERRORS)
                    else "db.still_refused",
                    error=describe_error(error),
                    retry_in=delay,
                )
        logger.info("db.pool_started", detail="database reachable; connection pool started")
        self.start_problem = None
        self._pool_starter = None

    async def close_connection_pool(self) -> None:
        if self._pool_starter is not None:
            self._pool_starter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pool_starter
            self._pool_starter = None
        self.start_problem = None
        if self.pool is not None:
            pool, self.pool = self.pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=self.settings.statement_timeout)
            except CLOSE_ERRORS as error:
                logger.warning(
                    "db.pool_close_failed",
                    detail="pool did not close cleanly; terminating it",
                    error=describe_error(error),
                )
                pool.terminate()

    async def acquire(self) -> Any:
        """A connection from the pool (or a new one without a pool), within the timeout."""
        if self.pool is None:
            if self._pool_starter is not None:
                raise DatabaseUnavailableError(NOT_REACHABLE_YET)
            return await self.get_new_connection()
        timeout = self.settings.pool_acquire_timeout
        # An acquire that finds an idle connection never suspends, so at any
        # moment another task can see, this counts only the blocked ones.
        self.acquire_waiting += 1
        try:
            # asyncio.timeout rather than acquire(timeout=): asyncpg implements
            # that with wait_for, a new task per acquire, on every query's path
            # (measured: ~15% of a cheap request at concurrency 32).
            async with asyncio.timeout(timeout):
                return await self.pool.acquire()
        except TimeoutError:
            raise PoolTimeoutError(
                f"No database connection became free within {timeout:g}s; try again shortly."
            ) from None
        finally:
            self.acquire_waiting -= 1

    async def release(self, connection: Any, *, broken: bool = False) -> None:
        """Give a connection back; a broken one is terminated instead of reused.

        Never raises an error: it runs in ``finally`` blocks, where an error
        would replace the exception that matters (the body's, the COMMIT's).
        """
        if self.pool is None:
            if broken:
                connection.terminate()
            else:
                try:
                    await connection.close()
                except Exception as error:
                    logger.warning(
                        "db.close_failed",
                        detail="closing a connection failed; terminating it",
                        error=describe_error(error),
                    )
                    connection.terminate()
            return
        if broken:
            # A pooled connection that died (backend killed, network reset) is
            # already back in the pool: asyncpg returns it on connection loss,
            # and the proxy then refuses terminate() with InterfaceError.
            with contextlib.suppress(asyncpg.exceptions.InterfaceError):
                connection.terminate()
        try:
            await self.pool.release(connection, timeout=self.settings.connect_timeout)
        except Exception as error:
            logger.warning(
                "db.release_failed",
                detail="pool release failed; terminating connection",
                error=describe_error(error),
            )
            with contextlib.suppress(asyncpg.exceptions.InterfaceError):
                connection.terminate()

    async def _run_in_pool(self, query: str, args: Any = None) -> Any:
        connection = await self.acquire()
        broken = False
        try:
            return await self._fetch_alone(connection, query, args)
        except CONNECTION_ERRORS:
            broken = True
            raise
        finally:
            await self.release(connection, broken=broken)

    async def _run_in_new_connection(self, query: str, args: Any = None) -> Any:
        """One query on a connection of its own (no pool, or ``in_pool=False``).

        While the pool is being started in the background this fails fast like
        :meth:`acquire`: otherwise every query (raw or Piccolo's) would open an
        unpooled connection, unbounded in number, and fail with a raw driver
        error while the database is down. Unlike Piccolo's version, the
        connection is closed whatever the error (also on cancellation).
        """
        if self._pool_starter is not None:
            raise DatabaseUnavailableError(NOT_REACHABLE_YET)
        connection = await self.get_new_connection()
        try:
            # Unwrapped even behind a pooler: this is the migrations' path, and
            # e.g. CREATE INDEX CONCURRENTLY cannot run inside a transaction.
            results = await connection.fetch(query, *(args or []))
        except asyncpg.PostgresError:
            await connection.close()
            raise
        except BaseException:
            connection.terminate()
            raise
        await connection.close()
        return results

    async def _fetch_alone(self, connection: Any, query: str, args: Any) -> Any:
        """A pooled statement outside any transaction.

        Behind a transaction pooler it runs in a transaction of its own: that
        is where its timeouts are set, and it keeps asyncpg's parse and
        execute steps on one server connection.
        """
        if not self.behind_pooler:
            return await connection.fetch(query, *(args or []))
        await connection.execute(self.begin_statement)
        try:
            results = await connection.fetch(query, *(args or []))
        except asyncpg.PostgresError:
            # The server aborted the transaction; anything else (a dropped
            # connection, a cancellation) is cleaned up by release/terminate.
            with contextlib.suppress(Exception):
                await connection.execute(ROLLBACK)
            raise
        await connection.execute(COMMIT)
        return results

    async def fetch(self, sql: LiteralString, *args: Any) -> list[Any]:
        """Run raw SQL on the current transaction's connection, or a pooled one.

        For tests, benchmarks and ad-hoc scripts: FlowForge's own code reaches
        the connection through ``require_transaction()`` only (docs/decisions/01-orm-approach.md).
        """
        current = self.current_transaction.get()
        if current is not None:
            return list(await current.connection.fetch(sql, *args))
        if self.pool is not None:
            return list(await self._run_in_pool(sql, args))
        return list(await self._run_in_new_connection(sql, args))


# The one engine of the process. piccolo_conf.DB and every Table refer to it.
DB = FlowForgeEngine()


def check_configuration() -> None:
    """Validate settings and resolve the database target now, at start-up.

    Exits with status 2 and one readable line instead of a traceback when the
    configuration cannot work (invalid settings, embedded server impossible).
    With DATABASE_URL set this does not connect; without it, it starts (or
    joins) the embedded server.
    """
    settings = get_settings()
    if settings.database_url is not None:
        DB.config  # noqa: B018 - resolves (and caches) the target; never connects
        return
    # Only without DATABASE_URL: the embedded server's code (and its extra's
    # dependencies) is never imported by a production process.
    from flowforge.db.embedded import EmbeddedDatabaseError

    try:
        DB.config  # noqa: B018 - starts (or joins) the embedded server
    except EmbeddedDatabaseError as error:
        print(f"FlowForge cannot start: {error}", file=sys.stderr)
        raise SystemExit(2) from None
