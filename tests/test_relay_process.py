"""The relay as a real process: SIGKILL mid-batch loses nothing; SIGTERM stops cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import defaultdict
from typing import Any

import pytest

from flowforge.db.engine import DB
from tests import relay_support as rs
from tests.live import free_port
from tests.metrics_support import scrape
from tests.support import REPO_ROOT, json_log_lines

pytestmark = pytest.mark.usefixtures("db")


def relay_env(database_url: str, prefix: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "OUTBOX_PUBLISHER": "redis",
        "REDIS_URL": rs.REDIS_URL,
        "REDIS_STREAM_PREFIX": prefix,
        "RELAY_BATCH_SIZE": "100",
        "RELAY_POLL_MIN_INTERVAL": "0.05",
        "RELAY_POLL_MAX_INTERVAL": "0.5",
        "RELAY_REAP_INTERVAL": "0",
        "RELAY_PRUNE_INTERVAL": "0",
        "LOG_FORMAT": "json",
        **extra,
    }


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def relay_in_transaction() -> bool:
    """The relay's claim connection is inside its transaction (holding row locks)."""
    rows = await DB.fetch(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'flowforge-relay' AND state = 'idle in transaction'"
    )
    return bool(rows[0][0])


async def test_a_relay_killed_mid_batch_loses_nothing_and_a_restart_publishes_all(
    database_url: str, redis_prefix: str
) -> None:
    await rs.insert_events(aggregates=150, per_aggregate=8)  # 1,200 events
    env = relay_env(database_url, redis_prefix, RELAY_LISTEN="false")
    client = await rs.redis_client()
    stream = f"{redis_prefix}:workflow_run"
    hanging = start(["-m", "tests.relay_worker"], env)
    try:
        await rs.wait_for(lambda: _stream_has(client, stream, 50), within=60, interval=0.05)
        await rs.wait_for(relay_in_transaction, within=10)
        # Mid-batch: half the batch is in Redis, none of it is marked in the database.
        assert await rs.unpublished() == 1200
        hanging.send_signal(signal.SIGKILL)
        assert hanging.wait(timeout=30) == -signal.SIGKILL
    finally:
        if hanging.poll() is None:
            hanging.kill()
        hanging.communicate()

    # A fresh relay, the real command, finds every event claimable again.
    metrics_port = free_port()
    relay = start(
        ["-m", "piccolo.main", "flowforge", "relay"],
        {**env, "RELAY_METRICS_PORT": str(metrics_port)},
    )
    try:
        await rs.wait_for(_all_published, within=60, interval=0.1)
        # Its own metrics port counts what it published (batches of 100).
        relay_metrics = await scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert relay_metrics["flowforge_relay_events_published_total"] == 1200
        assert relay_metrics["flowforge_relay_batches_total"] >= 12
        assert relay_metrics["flowforge_db_pool_max_size"] == 3
        relay.send_signal(signal.SIGTERM)
        _, stderr = relay.communicate(timeout=30)
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.communicate()
    assert relay.returncode == 0, stderr
    lines = json_log_lines(stderr)  # every line JSON: LOG_FORMAT=json
    stopping = [line for line in lines if line["event"] == "relay.stopping"]
    assert [line["signal"] for line in stopping] == ["SIGTERM"]
    (stopped,) = [line for line in lines if line["event"] == "relay.stopped"]
    assert stopped["published"] == 1200

    rows = await DB.fetch("SELECT id, seq, attempts FROM outbox")
    assert all(row["attempts"] == 1 for row in rows)  # marked once each
    entries = await rs.stream_entries(client, stream)
    await client.aclose()
    seq_by_id = {str(row["id"]): row["seq"] for row in rows}
    assert {entry["id"] for entry in entries} == set(seq_by_id)
    assert len(entries) == 1200 + 50  # the killed relay's half batch went twice
    first_seen: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for entry in entries:
        if entry["id"] not in seen:
            seen.add(entry["id"])
            first_seen[entry["aggregate_id"]].append(seq_by_id[entry["id"]])
    assert all(seqs == sorted(seqs) for seqs in first_seen.values())


async def _stream_has(client: Any, stream: str, entries: int) -> bool:
    return int(await client.xlen(stream)) >= entries


async def _all_published() -> bool:
    return await rs.unpublished() == 0


async def test_the_relay_refuses_the_log_publisher_in_production(database_url: str) -> None:
    env = relay_env(database_url, "unused", FLOWFORGE_ENV="production", OUTBOX_PUBLISHER="log")
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "piccolo.main", "flowforge", "relay"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "OUTBOX_PUBLISHER=log only prints events" in result.stderr
    assert "Traceback" not in result.stderr
