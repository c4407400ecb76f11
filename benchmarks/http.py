"""HTTP runs: the real app under uvicorn, a load generator, the pool under pressure, RSS.

The app runs as a separate uvicorn process against the benchmark database; the
load generator (a minimal asyncio HTTP/1.1 keep-alive client) runs in this
process. Both share the machine's cores, so requests/s here is a floor on what
the app can do, not a ceiling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import psutil

from benchmarks import dataset
from benchmarks.harness import percentile

REPO_ROOT = dataset.REPO_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def uvicorn_app(
    workers: int = 1, *, quiet: bool = False, **env: str
) -> AsyncIterator[tuple[str, psutil.Process]]:
    """Serve flowforge.main:app on a free port; yields (base URL, process).

    `quiet`: the app's log (its access lines, at LOG_LEVEL=INFO) goes to /dev/null."""
    port = free_port()
    process = subprocess.Popen(  # noqa: ASYNC220 - starting a server, not waiting on it
        [sys.executable, "-m", "uvicorn", "flowforge.main:app", "--port", str(port),
         "--log-level", "warning", "--no-access-log", "--workers", str(workers)],
        cwd=REPO_ROOT,
        # LOG_LEVEL=WARNING: no access line per request (the app writes them
        # itself now; --no-access-log only silences uvicorn's), as before.
        env={**os.environ, "DATABASE_URL": dataset.app_database_url(), "FLOWFORGE_ENV": "test",
             "LOG_LEVEL": "WARNING", **env},
        stderr=subprocess.DEVNULL if quiet else None,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as client:
            for _ in range(200):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("the app did not become ready")
        yield base, psutil.Process(process.pid)
    finally:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 15)
        except subprocess.TimeoutExpired:
            process.kill()


class Connection:
    """A minimal HTTP/1.1 keep-alive client: a load generator must cost far less
    than the server it measures (httpx costs about as much per request as the
    app itself, on the same two cores)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length = 0
        chunked = False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding" and "chunked" in value:
                chunked = True
        if chunked:
            while (size := int((await self.reader.readline()).strip(), 16)) > 0:
                await self.reader.readexactly(size + 2)
            await self.reader.readline()
        else:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


Request = Callable[[Connection, int], Awaitable[int]]


async def load(
    base: str,
    request: Request,
    *,
    concurrency: int,
    seconds: float,
    process: psutil.Process,
) -> dict[str, Any]:
    """`concurrency` keep-alive clients issuing `request` back to back for `seconds`."""
    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    failures = 0
    peak_rss = process.memory_info().rss
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def client_loop() -> None:
        nonlocal failures
        connection = Connection(host, int(port))
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    status = await request(connection, next(counter))
                    statuses[status] = statuses.get(status, 0) + 1
                except (OSError, ValueError, asyncio.IncompleteReadError):
                    failures += 1
                    connection.close()
                latencies.append(time.perf_counter() - started)
        finally:
            connection.close()

    async def sample_memory() -> None:
        nonlocal peak_rss
        while time.perf_counter() < deadline:
            with contextlib.suppress(psutil.Error):
                # The app's processes: with --workers, uvicorn's workers are its children.
                family = [process, *process.children(recursive=True)]
                peak_rss = max(peak_rss, sum(member.memory_info().rss for member in family))
            await asyncio.sleep(0.05)

    started = time.perf_counter()
    await asyncio.gather(sample_memory(), *(client_loop() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ok = sum(count for status, count in statuses.items() if status < 400)
    return {
        "concurrency": concurrency,
        "seconds": elapsed,
        "requests": len(latencies),
        "requests_per_second": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies, default=0.0) * 1000,
        "ok": ok,
        "errors": len(latencies) - ok,
        "statuses": statuses,
        "transport_failures": failures,
        "peak_rss_mb": peak_rss / 2**20,
    }


# The multi-worker run of a default `make bench`: several workers (one per core,
# at least 4, at most 8), more clients than all their pools' connections.
DEFAULT_CLIENTS = 200
POOL_CAP = 20  # the app's default DB_POOL_MAX_SIZE: no worker gets more
# Connections left for everything else on the server (relays, psql, monitoring,
# other databases' users), as docs/scaling.md's sizing rule keeps a reserve.
RESERVE = 10


def default_workers() -> int:
    return min(8, max(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class PoolBudget:
    """How many connections each worker's pool may open, and why."""

    max_connections: int
    superuser_reserved: int
    in_use: int
    reserve: int
    workers: int
    pool_max: int
    through: str

    @property
    def free(self) -> int:
        return self.max_connections - self.superuser_reserved - self.in_use - self.reserve

    def describe(self) -> str:
        if self.through == "pgbouncer":
            return (
                f"{self.workers} workers x pool {self.pool_max} behind PgBouncer (its "
                "max_client_conn 2000; the server sees PgBouncer's own pool)"
            )
        return (
            f"{self.workers} workers x pool {self.pool_max} = {self.workers * self.pool_max} <= "
            f"{self.free} free (max_connections {self.max_connections} - "
            f"{self.superuser_reserved} superuser-reserved - {self.in_use} in use - "
            f"{self.reserve} reserve)"
        )


async def pool_budget(workers: int, pool_max: int | None) -> PoolBudget:
    """Each worker's pool size so that all the workers' pools fit the server's
    max_connections, read from the server itself: the connections it has free
    (max_connections - superuser_reserved_connections - those open now - RESERVE)
    shared out evenly, at most POOL_CAP each. An explicit `pool_max` is checked
    against the same budget. Raises ValueError when it cannot fit."""
    import asyncpg

    connection = await asyncpg.connect(dataset.server_url())
    try:
        max_connections = int(await connection.fetchval("SHOW max_connections"))
        reserved = int(await connection.fetchval("SHOW superuser_reserved_connections"))
        in_use = int(
            await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            )
        )
    finally:
        await connection.close()
    through = "pgbouncer" if os.environ.get("BENCH_APP_DATABASE_URL") else "direct"
    free = max_connections - reserved - in_use - RESERVE
    # Behind PgBouncer the app's connections go to the pooler, which holds its
    # own small pool to the server (tests/pgbouncer.py): the app side only has
    # to fit its max_client_conn (2000), so every worker keeps the default pool.
    limit = 2000 if through == "pgbouncer" else free
    size = pool_max or min(POOL_CAP, limit // workers)
    budget = PoolBudget(max_connections, reserved, in_use, RESERVE, workers, max(size, 1), through)
    if size < 1 or workers * size > limit:
        raise ValueError(f"the pools do not fit: {budget.describe()}".replace(" <= ", " > "))
    return budget


async def many_workers(
    loaded: dataset.Loaded, *, budget: PoolBudget, clients: int, seconds: float
) -> dict[str, Any]:
    """`budget.workers` uvicorn processes (each its own pool of `budget.pool_max`),
    `clients` keep-alive clients on a read/write mix: 3 run-list pages per trigger."""
    from benchmarks import ops

    key = await ops.bench_api_key(loaded)
    headers = {"Authorization": f"Bearer {key}"}
    busy = loaded.busy_workflow_ids

    async def mixed(connection: Connection, n: int) -> int:
        if n % 4 == 3:
            workflow = loaded.workflow_ids[n % len(loaded.workflow_ids)]
            body = json.dumps({"inputs": {"n": n}}).encode()
            return await connection.request(
                "POST", f"/api/v1/workflows/{workflow}/runs", headers, body
            )
        path = f"/api/v1/workflows/{busy[n % len(busy)]}/runs?status=completed&limit=50"
        return await connection.request("GET", path, headers)

    async with uvicorn_app(
        budget.workers,
        DB_POOL_MIN_SIZE="1",
        DB_POOL_MAX_SIZE=str(budget.pool_max),
        DB_POOL_ACQUIRE_TIMEOUT="30",
    ) as (base, process):
        result = await load(base, mixed, concurrency=clients, seconds=seconds, process=process)
    result.update(
        workers=budget.workers,
        pool_max=budget.pool_max,
        pool_budget=asdict(budget) | {"free": budget.free, "rule": budget.describe()},
    )
    return {f"{budget.workers}_workers_{clients}_clients": result}


async def run_all(loaded: dataset.Loaded, *, seconds: float) -> dict[str, Any]:
    from benchmarks import ops

    key = await ops.bench_api_key(loaded)
    headers = {"Authorization": f"Bearer {key}"}
    busy = loaded.busy_workflow_ids
    results: dict[str, Any] = {}

    async def list_page(connection: Connection, n: int) -> int:
        workflow = busy[n % len(busy)]
        path = f"/api/v1/workflows/{workflow}/runs?status=completed&limit=50"
        return await connection.request("GET", path, headers)

    async def trigger(connection: Connection, n: int) -> int:
        workflow = loaded.workflow_ids[n % len(loaded.workflow_ids)]
        body = json.dumps({"inputs": {"n": n}}).encode()
        return await connection.request("POST", f"/api/v1/workflows/{workflow}/runs", headers, body)

    async with uvicorn_app(DB_POOL_MIN_SIZE="5", DB_POOL_MAX_SIZE="20") as (base, process):
        idle_rss = process.memory_info().rss / 2**20
        results["list_runs_page"] = await load(
            base, list_page, concurrency=32, seconds=seconds, process=process
        )
        results["trigger_run"] = await load(
            base, trigger, concurrency=32, seconds=seconds, process=process
        )
        results["idle_rss_mb"] = idle_rss
        for name in ("list_runs_page", "trigger_run"):
            results[name].update(workers=1, pool_max=20)
    # The pool under pressure: more clients than connections; every request
    # must still succeed, waiting a bounded time for a connection.
    async with uvicorn_app(
        DB_POOL_MIN_SIZE="2", DB_POOL_MAX_SIZE="10", DB_POOL_ACQUIRE_TIMEOUT="10"
    ) as (base, process):
        results["pool_50_clients_10_connections"] = await load(
            base, list_page, concurrency=50, seconds=seconds, process=process
        ) | {"workers": 1, "pool_max": 10}
    return results


def format_results(results: dict[str, Any]) -> str:
    header = (
        f"{'HTTP run':<32} {'conc':>4} {'workers x pool':>14} {'req/s':>8} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'errors':>7} {'peak RSS':>9}"
    )
    lines = [header, "-" * len(header)]
    for name, row in results.items():
        if not isinstance(row, dict):
            continue
        pool = f"{row['workers']} x {row['pool_max']}" if "pool_max" in row else "?"
        lines.append(
            f"{name:<32} {row['concurrency']:>4} {pool:>14} {row['requests_per_second']:>8.0f} "
            f"{row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['errors']:>7} "
            f"{row['peak_rss_mb']:>7.0f}MB"
        )
    for row in results.values():
        if isinstance(row, dict) and "pool_budget" in row:
            lines.append(f"pools: {row['pool_budget']['rule']}")
    return "\n".join(lines)
