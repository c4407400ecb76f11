"""The run queue under load (issue 18): drain throughput and claim latency vs queue depth.

``python -m benchmarks.queue [--runs N] [--workers W] [--depths 10000,100000]``
(DATABASE_URL: the server; BENCH_DATABASE: the database, default
``flowforge_bench_queue``, rebuilt each time). Three figures:

1. **Drain, in-process**: W workers (asyncio tasks, one pooled connection
   each) claim up to 10 runs at a time and complete each claimed run (its own
   transaction) until N queued runs are gone: runs/s, claim latency p50/p99,
   and that every run was claimed exactly once.
2. **Drain over HTTP**: the same against the real app under uvicorn
   (``POST /api/v1/runs/claim`` then ``POST /api/v1/runs/{id}/complete``), a
   worker-scope key, W keep-alive clients.
3. **Claim vs depth**: with D runs queued (over 100 workflows), one and eight
   claimers claim 10 runs in a transaction that is rolled back (the depth stays
   D): claims/s and latency. It must not degrade with D.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from typing import Any

import asyncpg

from benchmarks import dataset

os.environ.setdefault("BENCH_DATABASE", "flowforge_bench_queue")
dataset.DATABASE = os.environ["BENCH_DATABASE"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def fresh_database() -> str:
    admin = await asyncpg.connect(dataset.server_url())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{dataset.DATABASE}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{dataset.DATABASE}"')
    finally:
        await admin.close()
    url = dataset.database_url()
    await asyncio.to_thread(dataset.migrate, url)
    return url


async def stock(url: str, workflows: int, runs: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A user, `workflows` workflows, and `runs` pending runs spread over them."""
    connection = await asyncpg.connect(url)
    try:
        user = await connection.fetchval(
            "INSERT INTO users (email, display_name) VALUES ('bench@example.com', 'Bench') "
            "ON CONFLICT DO NOTHING RETURNING id"
        ) or await connection.fetchval("SELECT id FROM users WHERE email = 'bench@example.com'")
        await connection.execute("DELETE FROM workflow_runs")
        await connection.execute("DELETE FROM workflows")
        ids = [
            row["id"]
            for row in await connection.fetch(
                "INSERT INTO workflows (owner_id, name) SELECT $1, 'wf ' || g "
                "FROM generate_series(1, $2) g RETURNING id",
                user,
                workflows,
            )
        ]
        await connection.execute(
            "INSERT INTO workflow_runs (workflow_id, created_at) "
            "SELECT ($1::uuid[])[1 + g % $2], now() - make_interval(secs => $3 - g) "
            "FROM generate_series(1, $3) g",
            ids,
            len(ids),
            runs,
        )
        await connection.execute("TRUNCATE outbox")
        await connection.execute("VACUUM ANALYZE workflow_runs")
        await connection.execute("VACUUM ANALYZE workflows")
    finally:
        await connection.close()
    return user, ids


async def drain_in_process(runs: int, workers: int, batch: int = 10) -> dict[str, Any]:
    from flowforge.core.settings import get_settings
    from flowforge.db.engine import DB
    from flowforge.domain import queue
    from flowforge.domain import runs as run_ops

    get_settings.cache_clear()
    DB.reconfigure()
    await DB.start_connection_pool(min_size=workers, max_size=workers)
    claim_latencies: list[float] = []
    seen: set[uuid.UUID] = set()
    duplicates = 0

    async def worker(number: int) -> None:
        nonlocal duplicates
        while True:
            started = time.perf_counter()
            async with DB.transaction():
                claimed = await queue.claim_runs(f"w{number}", limit=batch)
            claim_latencies.append(time.perf_counter() - started)
            if not claimed:
                return
            for run in claimed:
                if run["id"] in seen:
                    duplicates += 1
                seen.add(run["id"])
                async with DB.transaction():
                    await run_ops.transition_run(run["id"], "complete")

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker(n) for n in range(workers)))
    finally:
        await DB.close_connection_pool()
    seconds = time.perf_counter() - started
    return {
        "runs": len(seen),
        "expected": runs,
        "duplicates": duplicates,
        "seconds": round(seconds, 2),
        "runs_per_second": round(len(seen) / seconds),
        "claim_p50_ms": round(1000 * percentile(claim_latencies, 0.5), 2),
        "claim_p99_ms": round(1000 * percentile(claim_latencies, 0.99), 2),
    }


async def drain_over_http(user: uuid.UUID, runs: int, workers: int) -> dict[str, Any]:
    from benchmarks.http import Connection, uvicorn_app
    from flowforge.core.settings import get_settings
    from flowforge.db.engine import DB
    from flowforge.db.tables import Scope
    from flowforge.domain import api_keys

    get_settings.cache_clear()
    DB.reconfigure()
    await DB.start_connection_pool(min_size=1, max_size=2)
    try:
        async with DB.transaction():
            _, key = await api_keys.create_api_key(user, name="worker", scopes=[Scope.WORKER])
    finally:
        await DB.close_connection_pool()
    headers = {"Authorization": f"Bearer {key}"}
    claim_latencies: list[float] = []
    done = 0
    errors = 0
    async with uvicorn_app(1, DB_POOL_MAX_SIZE=str(workers + 2)) as (base, _process):
        host, port = base.removeprefix("http://").split(":")

        async def worker(number: int) -> None:
            nonlocal done, errors
            connection = Connection(host, int(port))
            body = json.dumps({"worker_id": f"http-{number}", "limit": 10}).encode()
            try:
                while True:
                    started = time.perf_counter()
                    claimed = await claim(connection, body)
                    claim_latencies.append(time.perf_counter() - started)
                    if not claimed:
                        return
                    for run_id in claimed:
                        status = await connection.request(
                            "POST", f"/api/v1/runs/{run_id}/complete", headers
                        )
                        if status == 200:
                            done += 1
                        else:
                            errors += 1
            finally:
                connection.close()

        async def claim(connection: Connection, body: bytes) -> list[str]:
            status, payload = await request_json(connection, "/api/v1/runs/claim", headers, body)
            if status != 200:
                raise RuntimeError(f"claim: {status} {payload}")
            return [run["id"] for run in payload["runs"]]

        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(workers)))
        seconds = time.perf_counter() - started
    return {
        "runs": done,
        "expected": runs,
        "errors": errors,
        "seconds": round(seconds, 2),
        "runs_per_second": round(done / seconds),
        "claim_p50_ms": round(1000 * percentile(claim_latencies, 0.5), 2),
        "claim_p99_ms": round(1000 * percentile(claim_latencies, 0.99), 2),
    }


async def request_json(
    connection: Any, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, Any]:
    """POST on the keep-alive connection of benchmarks.http.Connection, reading the JSON body."""
    if connection.writer is None:
        connection.reader, connection.writer = await asyncio.open_connection(
            connection.host, connection.port
        )
    lines = [f"POST {path} HTTP/1.1", f"Host: {connection.host}:{connection.port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    connection.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    status = int((await connection.reader.readline()).split()[1])
    length = 0
    while (line := await connection.reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return status, json.loads(await connection.reader.readexactly(length))


async def claim_at_depth(url: str, claimers: int, seconds: float = 5.0) -> dict[str, Any]:
    """Claims of 10 rolled back (the depth stays put), `claimers` at once, for `seconds`."""
    from flowforge.db.sql import queue as queue_sql

    pool = await asyncpg.create_pool(url, min_size=claimers, max_size=claimers)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def claimer(number: int) -> None:
        async with pool.acquire() as connection:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                transaction = connection.transaction()
                await transaction.start()
                ids = [
                    row["id"]
                    for row in await connection.fetch(queue_sql.CLAIM_WORKFLOWS, None, None, None)
                ]
                rows = await connection.fetch(queue_sql.CLAIM_RUNS, ids, 10, f"d{number}")
                await transaction.rollback()
                assert rows
                latencies.append(time.perf_counter() - started)

    try:
        await asyncio.gather(*(claimer(n) for n in range(claimers)))
    finally:
        await pool.close()
    return {
        "claimers": claimers,
        "claims_per_second": round(len(latencies) / seconds),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--http-runs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--depths", default="10000,100000")
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args()
    url = await fresh_database()
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("FLOWFORGE_ENV", "test")
    result: dict[str, Any] = {"cores": os.cpu_count()}
    for depth in [int(d) for d in args.depths.split(",")]:
        await stock(url, 100, depth)
        result[f"depth_{depth}"] = [await claim_at_depth(url, c) for c in (1, 8)]
        print("depth", depth, result[f"depth_{depth}"], flush=True)
    user, _ = await stock(url, 100, args.runs)
    result["drain_in_process"] = await drain_in_process(args.runs, args.workers)
    print("in-process", result["drain_in_process"], flush=True)
    if not args.skip_http:
        user, _ = await stock(url, 100, args.http_runs)
        result["drain_http"] = await drain_over_http(user, args.http_runs, args.workers)
        print("http", result["drain_http"], flush=True)
    # Kept runs are renamed by hand to queue-<date>.json (docs cite them).
    out = dataset.REPO_ROOT / "benchmarks" / "results" / "queue-latest.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
