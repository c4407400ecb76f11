"""Read replicas (``DATABASE_REPLICA_URLS``) and read-your-writes tokens.

Read-only endpoints run their transaction on a streaming replica's connection
(:meth:`ReplicaSet.choose`); everything else, and key authentication (it
writes ``last_used_at``, and a revoked key must stop working at once, not
after the replica's lag), stays on the primary.

Consistency: a write response carries ``X-FlowForge-Consistency: <LSN>``, the
primary's WAL insert position read right after its COMMIT. A read that sends
the header back is served by a replica only if the replica's server, asked
inside the read's own transaction (``pg_last_wal_replay_lsn()``, so it holds
through a transaction pooler too), has replayed past it; otherwise by the
primary. Never stale for that client.

Poolers: ``DATABASE_REPLICA_POOLER`` (unset: ``DATABASE_POOLER``) says whether
the replica URLs go through a transaction-mode pooler; their engines then run
like the primary's behind one (docs/decisions/08-transaction-poolers.md).

Health: a monitor checks each replica every ``REPLICA_CHECK_INTERVAL``
seconds (reachable, in recovery, replayed position, lag). A replica that is
down, not a standby, or more than ``REPLICA_MAX_LAG_SECONDS`` behind is
skipped; a replica whose connection fails during a read is marked down at
once and the read is retried on the primary (:class:`ReplicaRouting`), so a
dying replica costs no failed request. State and counters are in ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg

from flowforge.core.errors import CONNECTION_ERRORS, DatabaseUnavailableError, translated_db_errors
from flowforge.core.logs import get_logger
from flowforge.core.settings import Settings
from flowforge.db.engine import DB, FlowForgeEngine, SafeTransaction
from flowforge.db.sql.replicas import REPLAYED_PAST, REPLICA_STATE, WAL_INSERT_POSITION

logger = get_logger(__name__)

CONSISTENCY_HEADER = "X-FlowForge-Consistency"
SERVED_BY_HEADER = "X-FlowForge-Served-By"


def parse_lsn(text: str) -> int:
    """``'16/B374D848'`` as a number (ValueError when it is not an LSN)."""
    high, _, low = text.partition("/")
    try:
        if not high or not low or len(high) > 8 or len(low) > 8:
            raise ValueError
        return (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        raise ValueError(f"not an LSN: {text!r}") from None


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


# A replica that cannot be reached (or has no pool yet).
UNREACHABLE: tuple[type[Exception], ...] = (
    TimeoutError,
    DatabaseUnavailableError,
    *CONNECTION_ERRORS,
)


# A replica's connection failing, or a query cancelled by a conflict with
# recovery (40001 on a standby): the read is retried on the primary.
REPLICA_FAILURES: tuple[type[Exception], ...] = (
    *CONNECTION_ERRORS,
    asyncpg.exceptions.SerializationError,
)


class ReplicaLostError(Exception):
    """A replica's connection failed during a read: retry the request on the primary.

    Deliberately not a DatabaseUnavailableError (which is answered as a 503):
    :class:`ReplicaRouting` catches it and replays the request.
    """


@dataclass
class Replica:
    name: str
    engine: FlowForgeEngine
    healthy: bool = False
    replayed: int = 0
    lag_seconds: float | None = None
    problem: str | None = "not checked yet"
    reads: int = 0
    failures: int = 0
    # Token reads its server turned down (not replayed that far yet): served by the primary.
    behind_token: int = 0
    checked_at: float = field(default=0.0)

    def usable(self, max_lag: float) -> bool:
        return self.healthy and self.lag_seconds is not None and self.lag_seconds <= max_lag

    def details(self) -> dict[str, Any]:
        return {
            "state": "ok" if self.healthy else f"skipped: {self.problem}",
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "replayed_lsn": format_lsn(self.replayed),
            "reads_served": self.reads,
            "failures": self.failures,
            "behind_token": self.behind_token,
        }

    def mark_down(self, problem: str) -> None:
        if self.healthy:
            logger.warning("replica.down", replica=self.name, problem=problem)
        self.healthy = False
        self.problem = problem

    def lost(self, error: BaseException, how: str = "connection lost") -> ReplicaLostError:
        """A read on this replica failed: mark it down, count it, and say so."""
        self.mark_down(f"{how} ({type(error).__name__})")
        self.failures += 1
        return ReplicaLostError(self.name)


class ReplicaSet:
    """The configured replicas, their pools and their monitor."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.replicas: list[Replica] = []
        for number, url in enumerate(settings.replica_urls, start=1):
            # DATABASE_REPLICA_POOLER (else DATABASE_POOLER) decides how the
            # replica's engine talks: behind a transaction pooler no statement
            # cache, no startup parameters, SET LOCAL timeouts in each BEGIN.
            replica_settings = settings.model_copy(
                update={
                    "database_url": url,
                    "database_replica_urls": None,
                    "database_replica_pooler": None,
                    "database_pooler": settings.replica_pooler,
                }
            )
            self.replicas.append(Replica(f"replica{number}", FlowForgeEngine(replica_settings)))
        self.primary_reads = 0
        self._monitor: asyncio.Task[None] | None = None
        self._next = 0

    def __bool__(self) -> bool:
        return bool(self.replicas)

    async def start(self) -> None:
        for replica in self.replicas:
            await replica.engine.start_connection_pool()
        await asyncio.gather(*(self.check(replica) for replica in self.replicas))
        self._monitor = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        for replica in self.replicas:
            await replica.engine.close_connection_pool()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.replica_check_interval)
            await asyncio.gather(*(self.check(replica) for replica in self.replicas))

    async def check(self, replica: Replica) -> None:
        """Refresh one replica's state; never raises."""
        try:
            async with (
                asyncio.timeout(self.settings.connect_timeout),
                DB.transaction(source=replica.engine),
            ):
                rows = await DB.require_transaction().connection.fetch(REPLICA_STATE)
        except UNREACHABLE as error:
            replica.mark_down(f"unreachable ({type(error).__name__})")
            return
        except Exception as error:  # a monitor must survive anything
            replica.mark_down(f"check failed ({type(error).__name__})")
            return
        finally:
            replica.checked_at = time.monotonic()
        row = rows[0]
        if not row["standby"] or row["replayed"] is None:
            replica.mark_down("not a standby")
            return
        replica.replayed = parse_lsn(row["replayed"])
        replica.lag_seconds = max(0.0, float(row["lag_seconds"] or 0))
        if replica.lag_seconds > self.settings.replica_max_lag:
            replica.mark_down(f"lagging {replica.lag_seconds:.1f}s")
            return
        if not replica.healthy:
            logger.info("replica.up", replica=replica.name)
        replica.healthy, replica.problem = True, None

    def choose(self) -> Replica | None:
        """A usable replica (round robin), else None.

        A consistency token is not compared with the monitor's last replayed
        position here: the read's own transaction asks its server
        (:data:`REPLAYED_PAST`), which is exact, also behind a pooler, and
        lets a replica serve a read milliseconds after the write instead of
        after its next check.
        """
        count = len(self.replicas)
        for offset in range(count):
            replica = self.replicas[(self._next + offset) % count]
            if replica.usable(self.settings.replica_max_lag):
                self._next = (self._next + offset + 1) % count
                return replica
        return None

    def details(self) -> dict[str, Any]:
        return {
            "primary_reads": self.primary_reads,
            **{replica.name: replica.details() for replica in self.replicas},
        }


# The process's replicas; configured by the app's lifespan (empty until then).
REPLICAS = ReplicaSet(Settings.model_construct(database_replica_urls=None))


def configure(settings: Settings) -> ReplicaSet:
    global REPLICAS
    REPLICAS = ReplicaSet(settings)
    return REPLICAS


async def replayed_past(token: int) -> bool:
    """In the current (replica) transaction: has its server replayed past `token`?"""
    connection = DB.require_transaction().connection
    return bool(await connection.fetchval(REPLAYED_PAST, format_lsn(token)))


async def commit_position() -> str | None:
    """The primary's WAL insert position now: a token for reads after a commit.

    None if it cannot be read: the write has committed, so its response must
    not turn into an error; the client then reads without a token.
    """
    try:
        # After the request's COMMIT: a short transaction of its own.
        async with DB.transaction():
            rows = await DB.require_transaction().connection.fetch(WAL_INSERT_POSITION)
    except Exception as error:
        logger.warning("replica.token_failed", error=type(error).__name__)
        return None
    return str(rows[0]["lsn"])


T = TypeVar("T")


@dataclass
class Read(Generic[T]):
    """What :func:`read_transaction` yields: the result of the work that had to
    run on the primary first, and where the read itself is served ("primary" or
    a replica's name; None when no replica is configured)."""

    first: T
    served_by: str | None


async def _begin_on_replica(replica: Replica, token: int | None) -> SafeTransaction | None:
    """The read's transaction on `replica`, or None when its server has not
    replayed past `token` yet (the read then goes to the primary).

    Starting is bounded by ``DB_CONNECT_TIMEOUT``: behind PgBouncer a replica
    that just died makes a BEGIN wait in the pooler's queue (for its
    ``query_wait_timeout``) instead of failing, and that read belongs on the
    primary. A failure raises ReplicaLostError: the GET is replayed on the primary.
    """
    transaction = DB.transaction(source=replica.engine)
    try:
        async with asyncio.timeout(replica.engine.settings.connect_timeout):
            await transaction.__aenter__()
    except UNREACHABLE as error:
        # Down since its last check: this read goes to the primary instead.
        raise replica.lost(error, "unreachable") from error
    if token is None:
        return transaction
    try:
        caught_up = await replayed_past(token)
    except BaseException as error:
        await transaction.__aexit__(type(error), error, error.__traceback__)
        if isinstance(error, REPLICA_FAILURES):
            raise replica.lost(error) from error
        raise
    if caught_up:
        return transaction
    replica.behind_token += 1
    # Ended once, outside the try above: a failed end has already given the
    # connection back, and this read goes to the primary either way.
    try:
        await transaction.__aexit__(None, None, None)
    except REPLICA_FAILURES as error:
        replica.lost(error)
    return None


@contextlib.asynccontextmanager
async def read_transaction(
    token: int | None,
    primary_first: Callable[[], Awaitable[T]],
    *,
    primary_only: bool = False,
    known: T | None = None,
) -> AsyncIterator[Read[T]]:
    """One read-only transaction: on a usable replica that has replayed past
    `token` (checked in the read's own transaction), else on the primary.

    `primary_first` runs on the primary before the read (key authentication: it
    writes ``last_used_at``, and a revoked key must stop working at once, not
    after a replica's lag). When the read is served by the primary it shares
    that transaction: one connection, one BEGIN/COMMIT. `known`: its result
    already (a remembered key, flowforge.domain.api_keys.PRINCIPALS), so no
    primary transaction is needed before a replica's read. Driver errors leave as
    domain errors; a replica that fails mid-read raises ReplicaLostError
    (:class:`ReplicaRouting` replays the GET on the primary).
    """
    replica = None if primary_only else REPLICAS.choose()
    async with translated_db_errors():
        if replica is None:
            async with DB.transaction():
                first = known if known is not None else await primary_first()
                if REPLICAS:
                    REPLICAS.primary_reads += 1
                yield Read(first, "primary" if REPLICAS else None)
            return
        if known is not None:
            first = known
        else:
            async with DB.transaction():
                first = await primary_first()
        transaction = await _begin_on_replica(replica, token)
    if transaction is None:
        async with translated_db_errors(), DB.transaction():
            REPLICAS.primary_reads += 1
            yield Read(first, "primary")
        return
    try:
        async with translated_db_errors(REPLICA_FAILURES):
            yield Read(first, replica.name)
    except REPLICA_FAILURES as error:
        await transaction.__aexit__(type(error), error, error.__traceback__)
        raise replica.lost(error) from error
    except BaseException as error:
        await transaction.__aexit__(type(error), error, error.__traceback__)
        raise
    try:
        await transaction.__aexit__(None, None, None)  # COMMIT of a read-only transaction
    except REPLICA_FAILURES as error:
        raise replica.lost(error) from error
    replica.reads += 1


class ReplicaRouting:
    """ASGI middleware for the replica routing.

    * Sends the consistency token of a write: its COMMIT (and so the token)
      happens after FastAPI has built the response object, so a dependency
      cannot set the header itself; it leaves it in the request state.
    * Replays a GET whose replica failed mid-read on the primary. The failure
      surfaces before any byte of the response is sent (the read transaction
      ends before the response), and a GET has no body to re-read.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not REPLICAS:
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})

        async def send_with_token(message: Any) -> None:
            token = state.get("flowforge_consistency")
            if message["type"] == "http.response.start" and token is not None:
                headers = [
                    *message.get("headers", []),
                    (b"x-flowforge-consistency", token.encode()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        if scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send_with_token)
            return
        try:
            await self.app(scope, receive, send)
        except ReplicaLostError:
            state["flowforge_primary_only"] = True
            await self.app(scope, receive, send)
