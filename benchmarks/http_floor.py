"""HTTP vs in-process: each hot route through the real app against the domain call it wraps.

For every hot route, the same operation twice:

* **HTTP**: the real app (``flowforge.main:app``) under uvicorn, one worker,
  its production defaults (the access log included, written to /dev/null),
  driven by the keep-alive load generator (benchmarks/http.py);
* **in-process**: what the route does below HTTP, in this process: the
  request's transaction with the caller authenticated in it
  (:func:`flowforge.api.deps.request_transaction`, what the route's dependency
  runs) and the domain function the route calls.

Both sides share the benchmark database and run interleaved (ABBA) rounds;
each round gives one **HTTP cost ratio** (in-process throughput / HTTP
throughput): how much more the operation costs through the HTTP layer. Target:
<= 1.5 at concurrency 32; concurrency 1 and 128 (more callers than the app's 20
connections: both sides queue in their pool, as a loaded worker does) are
reported with their spread, not judged. The app process's CPU per request (user + system,
from /proc through psutil, over each HTTP round) is reported too: the cost a
worker pays per request, whatever the load generator does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psutil

from benchmarks import dataset
from benchmarks.harness import Comparison, RoundResult, format_ratio, percentile, run_round
from benchmarks.http import Connection, uvicorn_app

CONCURRENCIES = (1, 32, 128)
HTTP_TARGET = 1.5
TARGET_CONCURRENCY = 32  # the target is defined here; other concurrencies are reported
WARMUP = 64  # calls per side before the rounds
HttpCall = Callable[[Connection, int], Awaitable[int]]
Operation = Callable[[int], Awaitable[Any]]


class Clients:
    """Keep-alive connections to the app, shared by the harness's callers (one each)."""

    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.idle: list[Connection] = []
        self.errors = 0
        self.statuses: dict[int, int] = {}  # of the failed requests (599: no answer)

    def operation(self, call: HttpCall) -> Operation:
        async def http(n: int) -> int:
            reused = bool(self.idle)
            connection = self.idle.pop() if reused else Connection(self.host, self.port)
            try:
                status = await call(connection, n)
            except (OSError, asyncio.IncompleteReadError):
                connection.close()
                if not reused:
                    return self._failed(599)
                # The server closed a keep-alive connection that sat idle (uvicorn:
                # after 5 s, e.g. during an in-process round): a client reconnects.
                connection = Connection(self.host, self.port)
                try:
                    status = await call(connection, n)
                except (OSError, ValueError, asyncio.IncompleteReadError):
                    connection.close()
                    return self._failed(599)
            except ValueError:
                connection.close()
                return self._failed(599)
            self.idle.append(connection)
            return self._failed(status) if status >= 400 else status

        return http

    def _failed(self, status: int) -> int:
        self.errors += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        return status

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()


class PendingRuns:
    """Runs waiting to be started, made ahead of the transition rounds."""

    def __init__(self) -> None:
        self.ids: list[uuid.UUID] = []

    async def make(self, workflow_id: uuid.UUID, count: int) -> None:
        import asyncpg

        connection = await asyncpg.connect(dataset.database_url())
        try:
            rows = await connection.fetch(
                "INSERT INTO workflow_runs (workflow_id, trigger_type, inputs) "
                "SELECT $1, 'manual', '{}'::jsonb FROM generate_series(1, $2) RETURNING id",
                workflow_id,
                count,
            )
        finally:
            await connection.close()
        self.ids.extend(row["id"] for row in rows)

    def take(self) -> uuid.UUID:
        return self.ids.pop()


def routes(
    loaded: dataset.Loaded, key: str, pending: PendingRuns
) -> dict[str, tuple[HttpCall, Operation]]:
    """Each hot route: (its HTTP request, the in-process work it wraps)."""
    from flowforge.api.deps import request_transaction
    from flowforge.db.tables import RunStatus
    from flowforge.domain import history, runs, users
    from flowforge.domain.api_keys import parse_key

    headers = {"Authorization": f"Bearer {key}"}
    presented = parse_key(key)
    busy = loaded.busy_workflow_ids
    sample = loaded.sample_run_ids
    workflows = loaded.workflow_ids

    async def me_http(connection: Connection, n: int) -> int:
        return await connection.request("GET", "/api/v1/me", headers)

    async def me_local(n: int) -> Any:
        async with request_transaction(presented) as principal:
            return await users.get_user(principal.user_id)

    async def trigger_http(connection: Connection, n: int) -> int:
        body = json.dumps({"inputs": {"n": n}}).encode()
        path = f"/api/v1/workflows/{workflows[n % len(workflows)]}/runs"
        return await connection.request("POST", path, headers, body)

    async def trigger_local(n: int) -> Any:
        async with request_transaction(presented) as principal:
            return await runs.trigger_run(
                workflows[n % len(workflows)], inputs={"n": n},
                triggered_by=principal.user_id, owner_id=principal.owner_filter,
            )  # fmt: skip

    async def transition_http(connection: Connection, n: int) -> int:
        run_id = pending.take()
        status = await connection.request("POST", f"/api/v1/runs/{run_id}/start", headers)
        if status >= 400:
            return status
        return await connection.request("POST", f"/api/v1/runs/{run_id}/complete", headers)

    async def transition_local(n: int) -> Any:
        run_id = pending.take()
        async with request_transaction(presented) as principal:
            await runs.transition_run(run_id, "start", owner_id=principal.owner_filter)
        async with request_transaction(presented) as principal:
            return await runs.transition_run(
                run_id, "complete", outputs=None, owner_id=principal.owner_filter
            )

    async def list_http(connection: Connection, n: int) -> int:
        path = f"/api/v1/workflows/{busy[n % len(busy)]}/runs?status=completed&limit=50"
        return await connection.request("GET", path, headers)

    async def list_local(n: int) -> Any:
        async with request_transaction(presented) as principal:
            return await runs.list_runs(
                busy[n % len(busy)], status=RunStatus.COMPLETED, limit=50,
                owner_id=principal.owner_filter,
            )  # fmt: skip

    async def get_http(connection: Connection, n: int) -> int:
        return await connection.request("GET", f"/api/v1/runs/{sample[n % len(sample)]}", headers)

    async def get_local(n: int) -> Any:
        async with request_transaction(presented) as principal:
            return await runs.get_run(sample[n % len(sample)], owner_id=principal.owner_filter)

    async def history_http(connection: Connection, n: int) -> int:
        path = f"/api/v1/runs/{sample[n % len(sample)]}/history"
        return await connection.request("GET", path, headers)

    async def history_local(n: int) -> Any:
        async with request_transaction(presented) as principal:
            return await history.list_run_history(
                sample[n % len(sample)], owner_id=principal.owner_filter
            )

    return {
        "authenticate (GET /me)": (me_http, me_local),
        "trigger_run": (trigger_http, trigger_local),
        "transition (start+complete)": (transition_http, transition_local),
        "list_runs_page": (list_http, list_local),
        "get_run_with_logs": (get_http, get_local),
        "get_run_history": (history_http, history_local),
    }


HTTP_ROUTES = (
    "authenticate (GET /me)",
    "trigger_run",
    "transition (start+complete)",
    "list_runs_page",
    "get_run_with_logs",
    "get_run_history",
)
READ_ROUTES = {"authenticate (GET /me)", "list_runs_page", "get_run_with_logs", "get_run_history"}


def calls_per_round(name: str, concurrency: int, operations: int) -> int:
    """Calls per side of a round: at least two per caller (fewer calls than
    callers would measure a lower concurrency than the one reported); a
    transition (two requests) makes half as many, still two per caller."""
    count = max(operations, 2 * concurrency)
    if name.startswith("transition"):
        count = max(10, count // 2, 2 * concurrency)
    return count


def pending_runs_needed(concurrencies: tuple[int, ...], operations: int, rounds: int) -> int:
    """Runs the transition rounds start and complete: every round's calls on both
    sides, both warm-ups, and a margin for the HTTP calls a client retries on a
    fresh connection (each retry takes another run)."""
    name = "transition (start+complete)"
    total = 0
    for concurrency in concurrencies:
        count = calls_per_round(name, concurrency, operations)
        total += 2 * rounds * count + 2 * min(WARMUP, count) + concurrency
    return total


def _cpu(process: psutil.Process) -> float:
    """The process's CPU time (user + system, every thread, in s).

    On Linux its POSIX process CPU clock (clock_getcpuclockid's
    ``MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)``): nanoseconds. psutil's
    user + system (from /proc/<pid>/stat) counts clock ticks, 10 ms: a round of
    a few fast requests then measures 0 or a whole tick, so it is the fallback.
    """
    if sys.platform == "linux":
        with contextlib.suppress(OSError, OverflowError):
            return time.clock_gettime(((~process.pid) << 3) | 2)
    times = process.cpu_times()
    return float(times.user + times.system)


async def run_all(
    loaded: dataset.Loaded,
    *,
    rounds: int,
    operations: int,
    concurrencies: tuple[int, ...] = CONCURRENCIES,
    env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every hot route at each concurrency: HTTP vs in-process, ABBA rounds."""
    from benchmarks import ops
    from flowforge.db.engine import DB

    key = await ops.bench_api_key(loaded)
    ops._configure_flowforge()
    pending = PendingRuns()
    await pending.make(
        loaded.workflow_ids[0], pending_runs_needed(concurrencies, operations, rounds)
    )
    summaries: list[dict[str, Any]] = []
    await DB.start_connection_pool()
    # The app's production defaults (LOG_LEVEL=INFO: an access line per request).
    app_env = {
        "DB_POOL_MIN_SIZE": str(ops.POOL_MAX),
        "DB_POOL_MAX_SIZE": str(ops.POOL_MAX),
        "LOG_LEVEL": "INFO",
    }
    try:
        async with uvicorn_app(quiet=True, **app_env, **(env or {})) as (base, process):
            clients = Clients(base)
            for name, (call, local) in routes(loaded, key, pending).items():
                http = clients.operation(call)
                for concurrency in concurrencies:
                    count = calls_per_round(name, concurrency, operations)
                    summary = await _compare(
                        name, http, local, process, concurrency=concurrency,
                        operations=count, rounds=rounds, clients=clients,
                    )  # fmt: skip
                    summaries.append(summary)
                    low, high = summary["ratio_spread"]
                    print(
                        f"  http:{name:<28} c={concurrency:<3} ratio {summary['cost_ratio']:.2f} "
                        f"[rounds {low:.2f}-{high:.2f}] HTTP {summary['flowforge']['throughput']:.0f}"
                        f"/s vs in-process {summary['floor']['throughput']:.0f}/s; app CPU "
                        f"{summary['app_cpu_ms_per_request']:.2f} ms/request; "
                        f"errors {summary['errors']}",
                        flush=True,
                    )
            clients.close()
    finally:
        await DB.close_connection_pool()
    return summaries


async def _compare(
    name: str,
    http: Operation,
    local: Operation,
    process: psutil.Process,
    *,
    concurrency: int,
    operations: int,
    rounds: int,
    clients: Clients,
) -> dict[str, Any]:
    comparison = Comparison(f"http:{name}", concurrency, "operations/s")
    requests = 2 if name.startswith("transition") else 1  # start, then complete
    warmup = min(WARMUP, operations)
    await run_round(http, min(concurrency, warmup), warmup)
    await run_round(local, min(concurrency, warmup), warmup)
    clients.errors = 0
    clients.statuses.clear()
    app_cpu: list[float] = []  # seconds of app CPU per request, each HTTP round
    local_cpu: list[float] = []  # seconds of this process's CPU per operation, in-process
    for index in range(rounds):
        order = ["http", "local"] if index % 2 == 0 else ["local", "http"]
        for side in order:
            if side == "http":
                before = _cpu(process)
                result = await run_round(http, concurrency, operations)
                app_cpu.append((_cpu(process) - before) / (operations * requests))
                comparison.flowforge.append(result)
            else:
                before = time.process_time()
                result = await run_round(local, concurrency, operations)
                local_cpu.append((time.process_time() - before) / operations)
                comparison.floor.append(result)
    comparison.errors = clients.errors
    failed_statuses = dict(clients.statuses)
    clients.statuses.clear()
    summary = comparison.summary()
    summary.update(
        target=HTTP_TARGET,
        baseline="in-process (transaction + authenticate + domain call)",
        app_cpu_ms_per_request=statistics.median(app_cpu) * 1000,
        app_cpu_ms_rounds=[value * 1000 for value in app_cpu],
        in_process_cpu_ms_per_operation=statistics.median(local_cpu) * 1000,
        read=name in READ_ROUTES,
        requests_per_operation=requests,
        failed_statuses=failed_statuses,
    )
    return summary


def format_table(summaries: list[dict[str, Any]]) -> str:
    header = (
        f"{'HTTP vs in-process':<34} {'conc':>4} {'HTTP':>9} {'in-proc':>9} "
        f"{'p50 ms H/in':>13} {'p99 ms H/in':>13} {'ratio [min-max]':>17} {'sd':>5} "
        f"{'app CPU/req':>11} {'target':>6}"
    )
    lines = [header, "-" * len(header)]
    for row in summaries:
        ours, floor = row["flowforge"], row["floor"]
        judged = row["concurrency"] == TARGET_CONCURRENCY
        over = judged and row["cost_ratio"] > row["target"]
        target = f"<={row['target']}" if judged else ""
        lines.append(
            f"{row['operation']:<34} {row['concurrency']:>4} {ours['throughput']:>7.0f}/s "
            f"{floor['throughput']:>7.0f}/s {ours['p50_ms']:>6.2f}/{floor['p50_ms']:<6.2f} "
            f"{ours['p99_ms']:>6.1f}/{floor['p99_ms']:<6.1f} {format_ratio(row):>17} "
            f"{row.get('ratio_sd', float('nan')):>5.2f} "
            f"{row['app_cpu_ms_per_request']:>8.2f} ms {target:>6}"
            f"{' OVER' if over else ''}"
        )
    lines.append(
        "ratio: in-process throughput / HTTP throughput per ABBA round (HTTP cost / in-process "
        "cost), median [lowest-highest]; target at c32 (c1 and c128 reported, not judged); "
        "app CPU/req: the uvicorn worker's user+system CPU per request (median of rounds)"
    )
    return "\n".join(lines)


__all__ = ["RoundResult", "format_table", "percentile", "run_all"]


async def _main(argv: list[str]) -> int:
    """`python -m benchmarks.http_floor [--runs N] [--rounds R] [--operations K] [--out F]`:
    this comparison alone (iterating on the HTTP layer)."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_floor")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--workflows", type=int, default=1_000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--operations", type=int, default=300)
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCIES)))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    sizes = dataset.Sizes(users=args.users, workflows=args.workflows, runs=args.runs)
    loaded = await dataset.prepare(sizes, fresh=False)
    summaries = await run_all(
        loaded, rounds=args.rounds, operations=args.operations,
        concurrencies=tuple(int(c) for c in args.concurrency.split(",")),
    )  # fmt: skip
    print(format_table(summaries))
    if args.out:
        args.out.write_text(json.dumps({"sizes": sizes.__dict__, "http_vs_in_process": summaries},
                                       indent=2, default=str))  # fmt: skip
    return 1 if any(row["errors"] for row in summaries) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(sys.argv[1:])))
