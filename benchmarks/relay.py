"""Outbox relay throughput and lag, measured on this machine (issue 4).

    .venv/bin/python -m benchmarks.relay [--events 20000] [--rate 500] [--seconds 20]

Uses the PostgreSQL server DATABASE_URL names (or the embedded one when it is
unset) and Redis at REDIS_URL (default redis://127.0.0.1:6379/0). It creates
its own database (``ff_bench_relay``), migrates it with the real CLI, and runs
the relay as real processes (``piccolo flowforge relay``, default settings,
publishing to Redis under a throw-away stream prefix that it deletes after).

1. Throughput: with 1, then 3 relays idle and listening, commit N events in
   one transaction (5 per aggregate, interleaved) and time from that COMMIT to
   the last ``published_at`` (database clock). Repeated; the median is reported.
2. Lag under steady load: 1 relay, and an inserter committing ``rate`` events
   per second (2 events per transaction) for ``seconds``; each event's lag is
   ``published_at - created_at`` (its transaction's time); p50 / p99 / max.

Two noisy cores: compare ratios between runs, not absolute numbers with other
machines. Results are printed as a table and written to
``benchmarks/results/relay-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results"
DATABASE = "ff_bench_relay"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def server_url() -> str:
    from urllib.parse import urlsplit, urlunsplit

    url = os.environ.get("DATABASE_URL")
    if url:
        return urlunsplit(urlsplit(url)._replace(path="/postgres"))
    from flowforge.core.settings import Settings
    from flowforge.db import embedded

    return embedded.database_url(Settings().data_dir, "postgres")


def with_database(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def create_database(server: str) -> str:
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    url = with_database(server, DATABASE)
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "piccolo.main", "migrations", "forwards", "all"],
        cwd=REPO_ROOT,
        env={**os.environ, "DATABASE_URL": url},
        check=True,
        capture_output=True,
        timeout=300,
    )
    return url


async def drop_database(server: str) -> None:
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    finally:
        await admin.close()


class Relays:
    """`count` real relay processes, started idle; SIGTERM on exit."""

    def __init__(self, url: str, prefix: str, count: int) -> None:
        # BENCH_RELAY_LOG_DIR=<dir>: keep each relay's log lines there.
        self.log_dir = os.environ.get("BENCH_RELAY_LOG_DIR")
        self.env = {
            **os.environ,
            "DATABASE_URL": url,
            "FLOWFORGE_ENV": "development",
            "OUTBOX_PUBLISHER": "redis",
            "REDIS_URL": REDIS_URL,
            "REDIS_STREAM_PREFIX": prefix,
            "REDIS_STREAM_MAXLEN": "0",
            "RELAY_REAP_INTERVAL": "0",
            "RELAY_PRUNE_INTERVAL": "0",
        }
        self.count = count
        self.processes: list[asyncio.subprocess.Process] = []

    async def __aenter__(self) -> Relays:
        for number in range(self.count):
            stderr: Any = asyncio.subprocess.DEVNULL
            if self.log_dir:
                stderr = self._log_file(number)
            self.processes.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "piccolo.main",
                    "flowforge",
                    "relay",
                    cwd=REPO_ROOT,
                    env=self.env,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=stderr,
                )
            )
        return self

    def _log_file(self, number: int) -> Any:
        assert self.log_dir is not None
        Path(self.log_dir).mkdir(parents=True, exist_ok=True)
        path = Path(self.log_dir) / f"relay-{time.strftime('%H%M%S')}-{number}.log"
        return path.open("w")  # closed when the benchmark exits

    async def __aexit__(self, *_: object) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


async def wait_until(connection: asyncpg.Connection, sql: str, deadline: float, *args: Any) -> None:
    started = time.monotonic()
    while not await connection.fetchval(sql, *args):
        if time.monotonic() - started > deadline:
            raise TimeoutError(f"not reached within {deadline}s: {sql}")
        await asyncio.sleep(0.01)


async def listening(connection: asyncpg.Connection, relays: int) -> None:
    await wait_until(
        connection,
        "SELECT count(*) = $1 FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'flowforge-relay-listener'",
        60,
        relays,
    )
    await asyncio.sleep(0.5)  # past their first (empty) pass: idle and listening


async def throughput(url: str, prefix: str, relays: int, events: int) -> float:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("TRUNCATE outbox")
        async with Relays(url, prefix, relays):
            await listening(connection, relays)
            per_aggregate = 5
            async with connection.transaction():
                await connection.execute(
                    """
                    INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
                    SELECT 'workflow_run', md5($1 || a)::uuid, 'run.step_logged',
                        jsonb_build_object('n', n, 'note', repeat('x', 200))
                    FROM generate_series(1, $2::int) AS n, generate_series(1, $3::int) AS a
                    ORDER BY n, a
                    """,
                    uuid.uuid4().hex,
                    per_aggregate,
                    events // per_aggregate,
                )
            committed = await connection.fetchval("SELECT clock_timestamp()")
            await wait_until(
                connection,
                "SELECT NOT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL)",
                300,
            )
            last = await connection.fetchval("SELECT max(published_at) FROM outbox")
        return events / (last - committed).total_seconds()
    finally:
        await connection.close()


async def steady_lag(url: str, prefix: str, rate: int, seconds: float) -> dict[str, Any]:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("TRUNCATE outbox")
        per_transaction = 2
        interval = per_transaction / rate
        async with Relays(url, prefix, 1):
            await listening(connection, 1)
            started = time.monotonic()
            sent = 0
            tick = 0
            while (now := time.monotonic()) - started < seconds:
                target = started + tick * interval
                if target > now:
                    await asyncio.sleep(target - now)
                await connection.execute(
                    """
                    INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
                    SELECT 'workflow_run', $1::uuid, 'run.step_logged', jsonb_build_object('n', n)
                    FROM generate_series(1, $2::int) AS n
                    """,
                    uuid.uuid4(),
                    per_transaction,
                )
                sent += per_transaction
                tick += 1
            elapsed = time.monotonic() - started
            await wait_until(
                connection,
                "SELECT NOT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL)",
                120,
            )
        row = await connection.fetchrow(
            """
            SELECT
                percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50,
                percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99,
                max(lag) AS max
            FROM (SELECT EXTRACT(EPOCH FROM published_at - created_at) * 1000 AS lag
                  FROM outbox) AS lags
            """
        )
        assert row is not None
        return {
            "target_rate": rate,
            "achieved_rate": round(sent / elapsed, 1),
            "events": sent,
            "seconds": round(elapsed, 1),
            "lag_ms_p50": round(float(row["p50"]), 1),
            "lag_ms_p99": round(float(row["p99"]), 1),
            "lag_ms_max": round(float(row["max"]), 1),
        }
    finally:
        await connection.close()


async def versions(url: str) -> dict[str, str]:
    connection = await asyncpg.connect(url)
    try:
        postgres = await connection.fetchval("SHOW server_version")
    finally:
        await connection.close()
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    return {"postgres": str(postgres), "redis": str(info.get("redis_version"))}


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)

    server = server_url()
    url = await create_database(server)
    prefix = f"ffbench:{uuid.uuid4().hex[:8]}"
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        results: dict[str, Any] = {
            "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "database": "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded",
                **(await versions(url)),
            },
            "throughput": {},
        }
        for relays in (1, 3):
            runs = [await throughput(url, prefix, relays, args.events) for _ in range(args.repeat)]
            results["throughput"][f"{relays}_relay"] = {
                "events": args.events,
                "events_per_second_median": round(statistics.median(runs)),
                "runs": [round(run) for run in runs],
            }
            print(f"throughput, {relays} relay(s): {[round(run) for run in runs]} events/s")
        results["steady_load"] = await steady_lag(url, prefix, args.rate, args.seconds)
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        await drop_database(server)

    print()
    print(f"{'measurement':<44}{'value':>14}")
    for relays in (1, 3):
        item = results["throughput"][f"{relays}_relay"]
        label = f"throughput, {relays} relay(s), {item['events']} events"
        print(f"{label:<44}{item['events_per_second_median']:>10} ev/s")
    steady = results["steady_load"]
    print(f"{'steady load (1 relay), achieved rate':<44}{steady['achieved_rate']:>10} ev/s")
    for key in ("p50", "p99", "max"):
        print(f"{'  lag ' + key:<44}{steady['lag_ms_' + key]:>11} ms")

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"relay-{stamp}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {path.relative_to(REPO_ROOT)}")
    return results


if __name__ == "__main__":
    asyncio.run(main())
