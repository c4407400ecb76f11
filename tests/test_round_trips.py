"""Round trips per request on each hot route, counted on the wire.

The real app (lifespan included) talks to the test database through a
recording TCP proxy (tests/tcp_proxy.py), directly and behind a real PgBouncer
in transaction mode. The proxy decodes what the app sends; every Query, Sync
and Flush is a round trip (the app waits for the server's answer). The pool
has one connection, and each route is called once before it is counted: the
counts are a warm connection's, the steady state of a running server.

What each remaining round trip is for (docs/decisions/08-transaction-poolers.md):

* ``BEGIN`` - the request's one transaction (behind a pooler with its
  ``SET LOCAL`` timeouts in the same message);
* ``authenticate`` - key lookup, checks and the ``last_used_at`` write in one
  statement (flowforge/domain/api_keys.py); none for a key the worker
  remembers (``AUTH_CACHE_SECONDS``): the request's actor (``flowforge.actor``)
  is then set by a ``SET LOCAL`` in the BEGIN message (writes; a read needs none);
* the route's own statement(s): one each, except completing a run, whose
  open step attempts are closed by a second statement that must see the
  snapshot taken after the transition holds the run's lock;
* ``COMMIT``.

Behind PgBouncer 1.18 asyncpg cannot keep prepared statements (the next
statement may reach another server connection), so each statement is two
round trips: Parse/Describe/Flush to learn its types, then Parse/Bind/Execute/Sync.

No reset on release: the pooled connections never carry session state
(docs/decisions/06-connection-pool.md); the tests at the end check that a
connection given back after a failed request, or after a statement that does
leave session state, is clean for its next user.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from flowforge.api.app import create_app
from flowforge.db.engine import DB, may_leave_session_state
from flowforge.db.sql import api_keys as api_keys_sql
from flowforge.db.sql import history as history_sql
from flowforge.db.tables import Role
from flowforge.domain import api_keys, runs
from tests import support
from tests.api.conftest import Caller, create_workflow, make_caller, trigger
from tests.conftest import Bouncer
from tests.tcp_proxy import RoundTrip, TcpProxy
from tests.test_engine_faults import through_proxy, upstream_of


@dataclass
class Wire:
    mode: str  # "direct" or "pgbouncer"
    remembered: bool  # keys remembered by the worker (AUTH_CACHE_SECONDS=60) or looked up (0)
    proxy: TcpProxy
    client: httpx.AsyncClient
    direct_url: str  # the test database, bypassing the proxy (and the pooler)


@pytest.fixture(
    params=[("direct", False), ("pgbouncer", False), ("direct", True), ("pgbouncer", True)],
    ids=["direct", "pgbouncer", "direct-remembered-key", "pgbouncer-remembered-key"],
)
async def wire(request: pytest.FixtureRequest, db: None, bouncer: Bouncer) -> AsyncIterator[Wire]:
    """The app on a one-connection pool, through a recording proxy (and PgBouncer)."""
    # The clean-connection tests pick a mode alone (indirect parametrization).
    mode, remembered = (request.param, False) if isinstance(request.param, str) else request.param
    behind = mode == "pgbouncer"
    target = bouncer.url if behind else bouncer.direct_url
    proxy = TcpProxy(upstream_of(target), record=True)
    await proxy.start()
    # sslmode=disable: the proxy reads the protocol, so it must be plain text.
    url = through_proxy(target, proxy.port) + "?sslmode=disable"
    env = {
        "DATABASE_POOLER": "transaction" if behind else "none",
        "DB_POOL_MIN_SIZE": "1",
        "DB_POOL_MAX_SIZE": "1",
        # Remembered: long enough that no entry lapses during the test.
        "AUTH_CACHE_SECONDS": "60" if remembered else "0",
    }
    api_keys.PRINCIPALS.clear()
    try:
        async with support.global_engine_on(url, **env):
            app = create_app()
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=transport, base_url="http://test") as client,
            ):
                yield Wire(mode, remembered, proxy, client, bouncer.direct_url)
    finally:
        await proxy.stop()


def statement(trip: RoundTrip) -> str:
    """A short name for the statement a round trip was for."""
    sql = trip.sql or ""
    names = {
        api_keys.AUTHENTICATE: "authenticate",
        runs.TRIGGER_RUN: "trigger",
        runs.TRANSITION_RUN: "transition",
        runs.CLOSE_ATTEMPTS: "close attempts",
        runs.GET_RUN: "run with logs",
    }
    if sql in names:
        name = names[sql]
    elif "visible_workflow_id" in sql:
        name = "list page"
    elif sql.startswith('SELECT ALL "users"'):
        name = "user"
    elif sql.startswith("BEGIN"):
        name = "BEGIN + SET LOCAL" if "SET LOCAL" in sql else "BEGIN"
    else:
        name = sql
    return f"describe {name}" if trip.kind == "H" else name


async def counted(
    wire: Wire, caller: Caller, method: str, path: str, status: int, **options: Any
) -> tuple[list[str], Any]:
    """The round trips of one request (the route is warm: called before), and its body."""
    since = len(wire.proxy.messages)
    response = await wire.client.request(method, path, headers=caller.headers, **options)
    assert response.status_code == status, response.text
    # One connection: everything recorded belongs to this request. The app has
    # released it (the response is built after the COMMIT), so nothing is in flight.
    return [statement(trip) for trip in wire.proxy.round_trips(since)], response.json()


def expected(wire: Wire, *statements: str, read: bool = False) -> list[str]:
    """BEGIN, authenticate, `statements`, COMMIT, as sent in `wire`'s mode.

    A remembered key is not looked up; a write's BEGIN then sets its actor."""
    lookup = () if wire.remembered else ("authenticate",)
    if wire.mode == "direct":
        # Prepared statements are cached per connection: one round trip each.
        begin = "BEGIN + SET LOCAL" if wire.remembered and not read else "BEGIN"
        return [begin, *lookup, *statements, "COMMIT"]
    # No statement cache behind PgBouncer 1.18: describe, then execute.
    return [
        "BEGIN + SET LOCAL",
        *(step for name in (*lookup, *statements) for step in (f"describe {name}", name)),
        "COMMIT",
    ]


async def test_round_trips_per_hot_route(wire: Wire) -> None:
    developer = await make_caller("dev@example.com", Role.DEVELOPER)
    workflow = await create_workflow(wire.client, developer)
    runs_path = f"/api/v1/workflows/{workflow['id']}/runs"
    warm = await trigger(wire.client, developer, workflow["id"])
    for path in (f"/api/v1/runs/{warm['id']}/start", f"/api/v1/runs/{warm['id']}/complete"):
        response = await wire.client.post(path, headers=developer.headers)
        assert response.status_code == 200, response.text
    for path in ("/api/v1/me", runs_path, f"/api/v1/runs/{warm['id']}"):
        response = await wire.client.get(path, headers=developer.headers)
        assert response.status_code == 200, response.text

    # Authentication: any authenticated GET (the route reads the key's user).
    trips, _ = await counted(wire, developer, "GET", "/api/v1/me", 200)
    assert trips == expected(wire, "user")

    # Trigger: workflow check, insert and run.created event in one statement.
    trips, run = await counted(wire, developer, "POST", runs_path, 201, json={})
    assert trips == expected(wire, "trigger")
    run_id = run["id"]

    # Start: compare-and-set of the status and its event in one statement.
    trips, _ = await counted(wire, developer, "POST", f"/api/v1/runs/{run_id}/start", 200)
    assert trips == expected(wire, "transition")

    # Complete: the transition, then the open step attempts closed (a new snapshot).
    trips, _ = await counted(wire, developer, "POST", f"/api/v1/runs/{run_id}/complete", 200)
    assert trips == expected(wire, "transition", "close attempts")

    # A page of runs, and one run with its step attempts: one query each.
    trips, _ = await counted(wire, developer, "GET", runs_path, 200)
    assert trips == expected(wire, "list page", read=True)
    trips, _ = await counted(wire, developer, "GET", f"/api/v1/runs/{run_id}", 200)
    assert trips == expected(wire, "run with logs", read=True)

    # Nothing else on the wire: no reset on release, no second connection.
    assert {message.connection for message in wire.proxy.messages} == {1}


# -- a connection given back is clean ----------------------------------------------------


async def backend_state(direct_url: str, pid: int) -> dict[str, Any]:
    """What the server knows about backend `pid`'s session (asked from outside)."""
    connection = await asyncpg.connect(direct_url)
    try:
        row = await connection.fetchrow(
            "SELECT state, backend_xid IS NOT NULL AS has_xid, "
            "(SELECT count(*) FROM pg_locks l WHERE l.pid = a.pid "
            "  AND l.locktype = 'advisory') AS advisory_locks "
            "FROM pg_stat_activity a WHERE pid = $1",
            pid,
        )
    finally:
        await connection.close()
    assert row is not None, f"backend {pid} is gone"
    return dict(row)


async def session() -> dict[str, Any]:
    """The pooled connection's session, seen from inside (the next user's view)."""
    rows = await DB.fetch(
        "SELECT pg_backend_pid() AS pid, current_setting('search_path') AS search_path, "
        "current_setting('statement_timeout') AS statement_timeout, "
        "(SELECT count(*) FROM pg_listening_channels()) AS listening, "
        "(SELECT count(*) FROM pg_cursors) AS cursors, "
        "txid_current_if_assigned() AS xid"
    )
    return dict(rows[0])


@pytest.mark.parametrize("wire", ["direct"], indirect=True)
async def test_a_failed_request_leaves_its_connection_clean(wire: Wire) -> None:
    """A request whose statement fails mid-transaction: ROLLBACK, and nothing left."""
    admin = await make_caller("ada@example.com", Role.ADMIN)
    clean = await session()
    since = len(wire.proxy.messages)
    body = {"email": "ada@example.com", "display_name": "Ada again", "role": "viewer"}
    response = await wire.client.post("/api/v1/users", json=body, headers=admin.headers)
    assert response.status_code == 409, response.text  # the unique email, at the INSERT
    sent = [trip.sql for trip in wire.proxy.round_trips(since) if trip.kind == "Q"]
    assert sent[0] == "BEGIN" and sent[-1] == "ROLLBACK", sent
    assert await session() == clean
    state = await backend_state(wire.direct_url, clean["pid"])
    assert state == {"state": "idle", "has_xid": False, "advisory_locks": 0}


@pytest.mark.parametrize("wire", ["direct"], indirect=True)
async def test_a_connection_left_in_a_transaction_is_rolled_back_on_release(
    wire: Wire,
) -> None:
    """Even a transaction nobody ended (a bug, a cancellation) never reaches the next user."""
    clean = await session()
    connection = await DB.acquire()
    await connection.execute("BEGIN")
    await connection.execute("CREATE TEMP TABLE left_open (x int) ON COMMIT DROP")
    await DB.release(connection)
    assert await session() == clean
    state = await backend_state(wire.direct_url, clean["pid"])
    assert state["state"] == "idle" and not state["has_xid"]


RESET_QUERY = "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;"

# Statements that leave state in the session, each the way a caller might send it.
SESSION_STATE = [
    "SET search_path = pg_catalog",
    "SET statement_timeout = 1234",
    "SELECT set_config('statement_timeout', '4321', false)",
    "LISTEN some_channel",
    "SELECT pg_advisory_lock(42)",
    "SELECT pg_try_advisory_lock(42)",
    "DECLARE held CURSOR WITH HOLD FOR SELECT 1",
    "/* a comment */ SET search_path = pg_catalog",
]


@pytest.mark.parametrize("statement_sql", SESSION_STATE)
@pytest.mark.parametrize("wire", ["direct"], indirect=True)
async def test_a_connection_that_carries_session_state_is_reset(
    wire: Wire, statement_sql: str
) -> None:
    """Where a connection can carry state, the reset on release stays."""
    clean = await session()
    connection = await DB.acquire()
    await connection.execute(statement_sql)
    since = len(wire.proxy.messages)
    await DB.release(connection)
    # asyncpg's reset query, on this connection only.
    assert [trip.sql for trip in wire.proxy.round_trips(since)] == [RESET_QUERY]
    assert await session() == clean
    assert (await backend_state(wire.direct_url, clean["pid"]))["advisory_locks"] == 0


@pytest.mark.parametrize("wire", ["direct"], indirect=True)
async def test_a_transaction_local_set_config_costs_no_reset(wire: Wire) -> None:
    """set_config(..., true) (the run_history actor, set by authentication on every
    request) ends with its transaction: no reset round trip on release."""
    clean = await session()
    connection = await DB.acquire()
    async with connection.transaction():
        await connection.execute(history_sql.SET_ACTOR, "cli:test")
        assert await connection.fetchval("SELECT current_setting('flowforge.actor')") == "cli:test"
    since = len(wire.proxy.messages)
    await DB.release(connection)
    assert wire.proxy.round_trips(since) == []
    assert await session() == clean
    rows = await DB.fetch("SELECT current_setting('flowforge.actor', true) AS actor")
    assert rows[0]["actor"] in ("", None)


@pytest.mark.parametrize(
    ("sql", "leaves_state"),
    [
        (api_keys_sql.AUTHENTICATE, False),
        (history_sql.SET_ACTOR, False),
        ("SELECT set_config('a.b', 'c', true)", False),
        ("SELECT set_config('a.b', 'x' || f(y), TRUE)", False),
        ("SELECT set_config('a.b', 'c', false)", True),
        ("SELECT set_config('a.b', $1, $2)", True),
        # One local call does not hide a session one in the same statement.
        ("SELECT set_config('a.b', 'c', true), set_config('d.e', 'f', false)", True),
        # Deeper nesting than the pattern reads: assumed to leave state (a reset, no harm).
        ("SELECT set_config('a.b', f(g('c')), true)", True),
    ],
)
def test_only_a_session_set_config_counts_as_session_state(sql: str, leaves_state: bool) -> None:
    assert may_leave_session_state(sql) is leaves_state
