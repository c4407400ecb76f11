"""Read replicas against a real streaming replica (tests/replica_cluster.py).

The app runs in-process (lifespan included) with DATABASE_URL on a throwaway
primary and DATABASE_REPLICA_URLS on its hot standby. Every response of a
read-only endpoint says where it was served (X-FlowForge-Served-By).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from flowforge.db import replicas
from tests import support
from tests.replica_cluster import Cluster, primary_and_replica, start_replica

SERVED_BY = replicas.SERVED_BY_HEADER
TOKEN = replicas.CONSISTENCY_HEADER


def test_replica_urls_are_validated() -> None:
    from pydantic import ValidationError

    from flowforge.settings import Settings

    settings = Settings(database_replica_urls="postgresql://a/db, postgresql://b/db")
    assert settings.replica_urls == ["postgresql://a/db", "postgresql://b/db"]
    with pytest.raises(ValidationError, match="PostgreSQL URL"):
        Settings(database_replica_urls="postgresql://a/db,mysql://b/db")
    assert Settings(database_replica_urls=" ").replica_urls == []


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


async def wait_until(condition: Callable[[], Any], what: str, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def app(cluster: Cluster, database_url: str) -> AsyncIterator[App]:
    from flowforge.api.app import create_app
    from flowforge.db.tables import Role
    from tests.api.conftest import WORKFLOW_BODY, make_caller

    async with support.global_engine_on(
        cluster.primary_url,
        DATABASE_REPLICA_URLS=cluster.replica_url,
        REPLICA_CHECK_INTERVAL="0.05",
        REPLICA_MAX_LAG_SECONDS="1",
        DATABASE_POOLER="none",
        RELAY_LISTEN_DATABASE_URL="",
    ):
        application = create_app()
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with (
            application.router.lifespan_context(application),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            caller = await make_caller(f"{uuid.uuid4().hex[:10]}@example.com", Role.ADMIN)
            created = await client.post(
                "/api/v1/workflows", json=WORKFLOW_BODY, headers=caller.headers
            )
            assert created.status_code == 201, created.text
            assert created.headers[TOKEN]  # a write response carries the token
            yield App(client, caller.headers, created.json()["id"], created.headers[TOKEN])


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
            # Half the reads wait until the replica has caught up: those are
            # the ones it serves, and they must see the write too.
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
            served[response.headers[SERVED_BY]] += 1
        if one.status_code != 200 or page.json()["items"][0]["id"] != run_id:
            stale += 1
    print(f"\nreplica routing: served {dict(served)}, stale reads {stale}")
    assert stale == 0
    # The reads after catch-up (60) go to the replica unless a check happened to
    # see it lag past the threshold on a loaded machine; then the primary serves.
    assert served["replica1"] >= 30
    assert served["primary"] >= 1  # reads right after the write, before replay


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


async def test_a_killed_replica_costs_no_errors(app: App, cluster: Cluster) -> None:
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
        await asyncio.to_thread(cluster.stop, "replica", "immediate")
        killed_at = sum(statuses.values())

        async def more_reads() -> bool:
            return sum(statuses.values()) >= killed_at + 300

        await wait_until(more_reads, "reads after the kill")
    finally:
        stop.set()
        await asyncio.gather(*readers)
    details = (await app.client.get("/readyz")).json()["replicas"]["replica1"]
    print(
        f"\nreplica kill: statuses {dict(statuses)}, served {dict(served)}, "
        f"reads replayed on the primary {details['failures']}"
    )
    assert set(statuses) == {200}, statuses
    assert details["state"].startswith("skipped")
    # Back: the standby restarts, catches up, and serves reads again.
    await asyncio.to_thread(cluster.start, "replica")

    async def serving_again() -> bool:
        response = await app.client.get("/api/v1/workflows", headers=app.headers)
        assert response.status_code == 200
        return response.headers[SERVED_BY] == "replica1"

    await wait_until(serving_again, "the restarted replica to serve reads", limit=30)
