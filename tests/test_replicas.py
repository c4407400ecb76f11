"""Read replicas against a real streaming replica (tests/replica_cluster.py).

The app runs in-process (lifespan included) with DATABASE_URL on a throwaway
primary and DATABASE_REPLICA_URLS on its hot standby. Every response of a
read-only endpoint says where it was served (X-FlowForge-Served-By).

Each app test runs in three set-ups (the `app` fixture's params):
``direct`` (both URLs direct), ``pooled`` (primary and replica each behind a
real PgBouncer in transaction mode, DATABASE_POOLER=transaction) and
``replica-pooled`` (primary direct, replica behind PgBouncer,
DATABASE_REPLICA_POOLER=transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from flowforge.core.settings import PoolerMode
from flowforge.db import replicas
from flowforge.db.engine import DB
from tests import support
from tests.pgbouncer import RunningBouncer, running_pgbouncer, via
from tests.replica_cluster import Cluster, primary_and_replica, start_replica

SERVED_BY = replicas.SERVED_BY_HEADER
TOKEN = replicas.CONSISTENCY_HEADER


def test_replica_urls_are_validated() -> None:
    from pydantic import ValidationError

    from flowforge.core.settings import Settings

    settings = Settings(database_replica_urls="postgresql://a/db, postgresql://b/db")
    assert settings.replica_urls == ["postgresql://a/db", "postgresql://b/db"]
    with pytest.raises(ValidationError, match="PostgreSQL URL"):
        Settings(database_replica_urls="postgresql://a/db,mysql://b/db")
    assert Settings(database_replica_urls=" ").replica_urls == []


def test_the_replica_pooler_defaults_to_the_primarys() -> None:
    from flowforge.core.settings import Settings

    urls = "postgresql://replica/db"
    pooled = Settings(database_replica_urls=urls, database_pooler=PoolerMode.TRANSACTION)
    assert pooled.replica_pooler is PoolerMode.TRANSACTION
    mixed = Settings(database_replica_urls=urls, database_replica_pooler=PoolerMode.TRANSACTION)
    assert (mixed.database_pooler, mixed.replica_pooler) == (
        PoolerMode.NONE,
        PoolerMode.TRANSACTION,
    )
    direct_replicas = Settings(
        database_replica_urls=urls,
        database_pooler=PoolerMode.TRANSACTION,
        database_replica_pooler=PoolerMode.NONE,
    )
    assert direct_replicas.replica_pooler is PoolerMode.NONE
    # Blank (compose's `${VAR:-}`) is unset.
    assert Settings(database_replica_urls=urls, database_replica_pooler="").replica_pooler is (
        PoolerMode.NONE
    )
    engine = replicas.ReplicaSet(mixed).replicas[0].engine
    assert engine.behind_pooler and engine.config["statement_cache_size"] == 0
    assert set(engine.config["server_settings"]) == {"application_name"}
    assert "statement_timeout" in engine.local_settings


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"DATABASE_REPLICA_POOLER": "transaction"},
            "DATABASE_REPLICA_POOLER is set but DATABASE_REPLICA_URLS is not",
        ),
        ({"DATABASE_REPLICA_URLS": "postgresql://db:5432/ff"}, "contains DATABASE_URL itself"),
        (
            {"DATABASE_REPLICA_URLS": "postgresql://r/ff", "DATABASE_REPLICA_POOLER": "session"},
            "DATABASE_REPLICA_POOLER",
        ),
    ],
)
def test_unsupported_replica_settings_stop_start_up(env: dict[str, str], message: str) -> None:
    full_env = {
        **os.environ,
        "DATABASE_URL": "postgresql://db:5432/ff",
        "DATABASE_REPLICA_URLS": "",
        "DATABASE_REPLICA_POOLER": "",
        **env,
    }
    result = subprocess.run(
        [sys.executable, "-c", "import flowforge.main"],
        cwd=support.REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2  # the header and one problem


def test_lsn_tokens_round_trip() -> None:
    assert replicas.parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert replicas.format_lsn(replicas.parse_lsn("0/16B3748")) == "0/16B3748"
    for bad in ("", "16", "/1", "x/1", "123456789/0"):
        with pytest.raises(ValueError, match="LSN"):
            replicas.parse_lsn(bad)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with primary_and_replica() as cluster:
        support.piccolo("migrations", "forwards", "all", database_url=cluster.primary_url)
        start_replica(cluster)
        yield cluster


@dataclass
class App:
    client: httpx.AsyncClient
    headers: dict[str, str]
    workflow_id: str
    token: str  # the workflow creation's consistency token
    mode: str
    replica_bouncer: RunningBouncer | None


async def wait_until(condition: Callable[[], Any], what: str, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


MODES = ("direct", "pooled", "replica-pooled")


@pytest.fixture(params=MODES)
async def app(cluster: Cluster, database_url: str, request: Any) -> AsyncIterator[App]:
    from flowforge.api.app import create_app
    from flowforge.db.tables import Role
    from tests.api.conftest import WORKFLOW_BODY, make_caller

    mode: str = request.param
    async with contextlib.AsyncExitStack() as stack:
        primary_url, replica_url, bouncer = cluster.primary_url, cluster.replica_url, None
        env = {"DATABASE_POOLER": "none", "DATABASE_REPLICA_POOLER": ""}
        if mode != "direct":
            bouncer = await stack.enter_async_context(running_pgbouncer(cluster.replica_url))
            replica_url = via(bouncer.port, cluster.replica_url)
            env["DATABASE_REPLICA_POOLER"] = "transaction"
        if mode == "pooled":
            port = (await stack.enter_async_context(running_pgbouncer(cluster.primary_url))).port
            primary_url = via(port, cluster.primary_url)
            env = {"DATABASE_POOLER": "transaction", "DATABASE_REPLICA_POOLER": ""}
        await stack.enter_async_context(
            support.global_engine_on(
                primary_url,
                DATABASE_REPLICA_URLS=replica_url,
                REPLICA_CHECK_INTERVAL="0.05",
                REPLICA_MAX_LAG_SECONDS="1",
                DB_CONNECT_TIMEOUT="2",
                RELAY_LISTEN_DATABASE_URL="",
                **env,
            )
        )
        application = create_app()
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        await stack.enter_async_context(application.router.lifespan_context(application))
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://test")
        )
        expected = PoolerMode.NONE if mode == "direct" else PoolerMode.TRANSACTION
        assert replica().engine.settings.database_pooler is expected
        assert DB.behind_pooler is (mode == "pooled")
        caller = await make_caller(f"{uuid.uuid4().hex[:10]}@example.com", Role.ADMIN)
        created = await client.post("/api/v1/workflows", json=WORKFLOW_BODY, headers=caller.headers)
        assert created.status_code == 201, created.text
        assert created.headers[TOKEN]  # a write response carries the token
        yield App(
            client, caller.headers, created.json()["id"], created.headers[TOKEN], mode, bouncer
        )


def replica() -> replicas.Replica:
    return replicas.REPLICAS.replicas[0]


async def test_reads_are_served_by_the_replica_and_writes_by_the_primary(app: App) -> None:
    async def served_by_replica() -> bool:
        response = await app.client.get("/api/v1/workflows", headers=app.headers)
        assert response.status_code == 200
        return response.headers[SERVED_BY] == "replica1"

    await wait_until(served_by_replica, "a read served by the replica")
    body = (await app.client.get("/readyz")).json()
    assert body["replicas"]["replica1"]["state"] == "ok"
    assert body["replicas"]["replica1"]["reads_served"] >= 1
    # A write is never served by the replica (it would fail there: read-only).
    written = await app.client.post(
        f"/api/v1/workflows/{app.workflow_id}/runs", json={}, headers=app.headers
    )
    assert written.status_code == 201
    assert replicas.parse_lsn(written.headers[TOKEN]) > 0


async def test_write_then_read_with_the_token_is_never_stale(app: App) -> None:
    served: Counter[str] = Counter()
    stale = 0
    for number in range(60):
        written = await app.client.post(
            f"/api/v1/workflows/{app.workflow_id}/runs", json={}, headers=app.headers
        )
        assert written.status_code == 201
        run_id, token = written.json()["id"], written.headers[TOKEN]
        if number % 2:
            # Half the reads wait until the replica has caught up: those it
            # serves for sure, and they must see the write too. The others go
            # at once: served by the replica only if its server has replayed
            # the write when the read's transaction asks.
            lsn = replicas.parse_lsn(token)

            async def caught_up(lsn: int = lsn) -> bool:
                return replica().replayed >= lsn

            await wait_until(caught_up, "the replica to replay the write")
        headers = {**app.headers, TOKEN: token}
        one = await app.client.get(f"/api/v1/runs/{run_id}", headers=headers)
        page = await app.client.get(
            f"/api/v1/workflows/{app.workflow_id}/runs?limit=5", headers=headers
        )
        for response in (one, page):
            assert response.status_code == 200, response.text
            served[response.headers[SERVED_BY]] += 1
        if one.json()["id"] != run_id or page.json()["items"][0]["id"] != run_id:
            stale += 1
    details = replica().details()
    print(
        f"\nreplica routing ({app.mode}): served {dict(served)}, stale reads {stale}, "
        f"turned down by the replica's own check {details['behind_token']}"
    )
    assert stale == 0
    assert sum(served.values()) == 120
    # The reads after catch-up (60) go to the replica unless a check happened to
    # see it lag past the threshold on a loaded machine; then the primary serves.
    assert served["replica1"] >= 30


async def test_timeouts_hold_in_replica_transactions(app: App) -> None:
    """Replica transactions run under the limits, behind a pooler too (SET LOCAL in
    the BEGIN): a runaway statement on the replica is cancelled by its server."""
    engine = replica().engine
    settings = engine.settings
    async with DB.transaction(source=engine):
        rows = await DB.fetch(TIMEOUTS)
    assert rows[0]["standby"] is True  # it was the replica's transaction
    assert int(rows[0]["statement_ms"]) == int(settings.statement_timeout * 1000)
    assert int(rows[0]["idle_ms"]) == int((settings.statement_timeout + 30) * 1000)
    if app.mode != "direct":
        assert engine.config["statement_cache_size"] == 0
        assert set(engine.config["server_settings"]) == {"application_name"}
    quick = replicas.ReplicaSet(DB.settings.model_copy(update={"statement_timeout": 0.2}))
    fast = quick.replicas[0].engine
    await fast.start_connection_pool(min_size=1, max_size=1)
    try:
        started = time.monotonic()
        with pytest.raises(asyncpg.exceptions.QueryCanceledError):
            await fast.fetch(RUNAWAY)
        assert time.monotonic() - started < 3
    finally:
        await fast.close_connection_pool()


TIMEOUTS = """
SELECT pg_is_in_recovery() AS standby,
       (SELECT setting FROM pg_settings WHERE name = 'statement_timeout') AS statement_ms,
       (SELECT setting FROM pg_settings
         WHERE name = 'idle_in_transaction_session_timeout') AS idle_ms
"""
RUNAWAY = "SELECT pg_sleep(5)"


async def test_a_token_the_replica_has_not_replayed_is_read_on_the_primary(
    app: App, cluster: Cluster
) -> None:
    """The check inside the read's transaction, not the monitor, decides."""
    standby = await asyncpg.connect(cluster.replica_url)
    try:
        await standby.execute("SELECT pg_wal_replay_pause()")
        written = await app.client.post(
            f"/api/v1/workflows/{app.workflow_id}/runs", json={}, headers=app.headers
        )
        assert written.status_code == 201
        run_id, token = written.json()["id"], written.headers[TOKEN]
        async with DB.transaction(source=replica().engine):
            assert await replicas.replayed_past(replicas.parse_lsn(token)) is False
        for _ in range(5):
            read = await app.client.get(
                f"/api/v1/runs/{run_id}", headers={**app.headers, TOKEN: token}
            )
            assert read.status_code == 200, read.text
            assert read.headers[SERVED_BY] == "primary"
    finally:
        await standby.execute("SELECT pg_wal_replay_resume()")
        await standby.close()

    async def on_replica() -> bool:
        read = await app.client.get(f"/api/v1/runs/{run_id}", headers={**app.headers, TOKEN: token})
        assert read.status_code == 200, read.text
        return read.headers[SERVED_BY] == "replica1"

    await wait_until(on_replica, "the token read to be served by the replica once replayed")


async def test_a_bad_consistency_token_is_a_422(app: App) -> None:
    response = await app.client.get(
        "/api/v1/workflows", headers={**app.headers, TOKEN: "yesterday"}
    )
    assert response.status_code == 422
    assert TOKEN in response.json()["error"]["message"]


async def test_a_lagging_replica_is_skipped_without_errors(app: App, cluster: Cluster) -> None:
    standby = await asyncpg.connect(cluster.replica_url)
    try:
        await standby.execute("SELECT pg_wal_replay_pause()")
        written = await app.client.post(
            f"/api/v1/workflows/{app.workflow_id}/runs", json={}, headers=app.headers
        )
        assert written.status_code == 201

        async def skipped() -> bool:
            state = (await app.client.get("/readyz")).json()["replicas"]["replica1"]["state"]
            return bool(state.startswith("skipped: lagging"))

        await wait_until(skipped, "the replica to be skipped as lagging")
        for _ in range(20):
            response = await app.client.get("/api/v1/workflows", headers=app.headers)
            assert response.status_code == 200
            assert response.headers[SERVED_BY] == "primary"
    finally:
        await standby.execute("SELECT pg_wal_replay_resume()")
        await standby.close()

    async def back() -> bool:
        return replica().healthy

    await wait_until(back, "the replica to be used again")


async def read_through_a_kill(app: App, kill: Callable[[], None], what: str) -> dict[str, Any]:
    """12 concurrent token readers; `kill` runs once the replica serves reads; every
    read must still be a 200. Returns the replica's /readyz details."""
    statuses: Counter[int] = Counter()
    served: Counter[str] = Counter()
    stop = asyncio.Event()

    headers = {**app.headers, TOKEN: app.token}  # never read the workflow stale

    async def reader() -> None:
        while not stop.is_set():
            response = await app.client.get(
                f"/api/v1/workflows/{app.workflow_id}/runs?limit=5", headers=headers
            )
            statuses[response.status_code] += 1
            served[response.headers.get(SERVED_BY, "?")] += 1

    readers = [asyncio.create_task(reader()) for _ in range(12)]
    try:

        async def some_on_replica() -> bool:
            return served["replica1"] >= 50

        await wait_until(some_on_replica, "reads on the replica")
        await asyncio.to_thread(kill)
        killed_at = sum(statuses.values())

        async def more_reads() -> bool:
            return sum(statuses.values()) >= killed_at + 300

        await wait_until(more_reads, "reads after the kill")
    finally:
        stop.set()
        await asyncio.gather(*readers)
    details: dict[str, Any] = (await app.client.get("/readyz")).json()["replicas"]["replica1"]
    print(
        f"\n{what} killed ({app.mode}): statuses {dict(statuses)}, served {dict(served)}, "
        f"reads replayed on the primary {details['failures']}"
    )
    assert set(statuses) == {200}, statuses
    assert details["state"].startswith("skipped")
    return details


async def test_a_killed_replica_costs_no_errors(app: App, cluster: Cluster) -> None:
    await read_through_a_kill(app, lambda: cluster.stop("replica", "immediate"), "replica")
    # Back: the standby restarts, catches up, and serves reads again.
    await asyncio.to_thread(cluster.start, "replica")

    async def serving_again() -> bool:
        response = await app.client.get("/api/v1/workflows", headers=app.headers)
        assert response.status_code == 200
        return response.headers[SERVED_BY] == "replica1"

    await wait_until(serving_again, "the restarted replica to serve reads", limit=30)


@pytest.mark.parametrize("app", ["pooled", "replica-pooled"], indirect=True)
async def test_a_killed_replica_pgbouncer_costs_no_errors(app: App) -> None:
    bouncer = app.replica_bouncer
    assert bouncer is not None
    details = await read_through_a_kill(app, bouncer.kill, "the replica's PgBouncer")
    assert details["state"].startswith("skipped: unreachable") or details["failures"] >= 1
