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
async def uvicorn_app(workers: int = 1, **env: str) -> AsyncIterator[tuple[str, psutil.Process]]:
    """Serve flowforge.main:app on a free port; yields (base URL, process)."""
    port = free_port()
    process = subprocess.Popen(  # noqa: ASYNC220 - starting a server, not waiting on it
        [sys.executable, "-m", "uvicorn", "flowforge.main:app", "--port", str(port),
         "--log-level", "warning", "--no-access-log", "--workers", str(workers)],
        cwd=REPO_ROOT,
        # LOG_LEVEL=WARNING: no access line per request (the app writes them
        # itself now; --no-access-log only silences uvicorn's), as before.
        env={**os.environ, "DATABASE_URL": dataset.app_database_url(), "FLOWFORGE_ENV": "test",
             "LOG_LEVEL": "WARNING", **env},
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
                peak_rss = max(peak_rss, process.memory_info().rss)
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


async def many_workers(
    loaded: dataset.Loaded, *, workers: int, clients: int, pool_max: int, seconds: float
) -> dict[str, Any]:
    """`workers` uvicorn processes (each its own pool of `pool_max`), `clients`
    keep-alive clients on a read/write mix: 3 run-list pages per trigger."""
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
        workers,
        DB_POOL_MIN_SIZE="1",
        DB_POOL_MAX_SIZE=str(pool_max),
        DB_POOL_ACQUIRE_TIMEOUT="30",
    ) as (base, process):
        result = await load(base, mixed, concurrency=clients, seconds=seconds, process=process)
    result.update(workers=workers, pool_max=pool_max)
    return {f"{workers}_workers_{clients}_clients": result}


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
    # The pool under pressure: more clients than connections; every request
    # must still succeed, waiting a bounded time for a connection.
    async with uvicorn_app(
        DB_POOL_MIN_SIZE="2", DB_POOL_MAX_SIZE="10", DB_POOL_ACQUIRE_TIMEOUT="10"
    ) as (base, process):
        results["pool_50_clients_10_connections"] = await load(
            base, list_page, concurrency=50, seconds=seconds, process=process
        )
    return results


def format_results(results: dict[str, Any]) -> str:
    header = f"{'HTTP run':<32} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'peak RSS':>9}"
    lines = [header, "-" * len(header)]
    for name, row in results.items():
        if not isinstance(row, dict):
            continue
        lines.append(
            f"{name:<32} {row['concurrency']:>4} {row['requests_per_second']:>8.0f} "
            f"{row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['errors']:>7} "
            f"{row['peak_rss_mb']:>7.0f}MB"
        )
    return "\n".join(lines)
