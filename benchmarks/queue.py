"""The run queue under load (issue 18): drain throughput and claim latency vs queue depth.

``python -m benchmarks.queue [--runs N] [--workers W] [--depths 10000,1000000]
[--depth-rounds R] [--depth-seconds S] [--skip-depths] [--skip-drains] [--skip-http]``
(DATABASE_URL: the server; BENCH_DATABASE: the database, default
``flowforge_bench_queue``, rebuilt each time). Three figures:

1. **Drain, in-process**: W workers (asyncio tasks, one pooled connection
   each) claim up to 10 runs at a time and complete each claimed run (its own
   transaction) until N queued runs are gone: runs/s, claim latency p50/p99,
   and that every run was claimed exactly once.
2. **Drain over HTTP**: the same against the real app under uvicorn
   (``POST /api/v1/runs/claim`` then ``POST /api/v1/runs/{id}/complete``), a
   worker-scope key, W keep-alive clients.
3. **Claim vs depth**: one database per depth D (D runs queued over 100
   workflows); one and eight claimers claim 10 runs in a transaction that is
   rolled back (the depth stays D), every depth in each of R interleaved (ABBA)
   rounds: claims/s and latency per depth, and per round the deepest queue's
   claims/s over the shallowest's (median and spread). It must not degrade
   with D: the ratio stays near 1.

The two drains (1 and 2) are also a section of ``make bench``
(:func:`run_section`, in ``<BENCH_DATABASE>_queue``); the depth study stays
here. After each drain the database itself is asked whether every run was
claimed exactly once (``workflow_runs.claims``) and completed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg

from benchmarks import dataset

DEFAULT_DATABASE = "flowforge_bench_queue"
BATCH = 10  # runs per claim
WORKFLOWS = 100  # the queued runs are spread over this many workflows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def fresh_database(name: str) -> str:
    """Database `name`, dropped, created and migrated; its URL."""
    admin = await asyncpg.connect(dataset.server_url())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = dataset.database_url(name)
    await asyncio.to_thread(dataset.migrate, url)
    return url


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(dataset.server_url())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


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


@contextlib.asynccontextmanager
async def engine_on(url: str, size: int) -> AsyncIterator[None]:
    """FlowForge's engine on `url` with a pool of `size`, then back to what it was."""
    from flowforge.core.settings import get_settings
    from flowforge.db.engine import DB

    saved = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("FLOWFORGE_ENV", "test")
    get_settings.cache_clear()
    DB.reconfigure()
    try:
        await DB.start_connection_pool(min_size=size, max_size=size)
        try:
            yield
        finally:
            await DB.close_connection_pool()
    finally:
        if saved is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = saved
        get_settings.cache_clear()
        DB.reconfigure()


class Drain:
    """What the workers of one drain saw: claim latencies, runs, duplicates, errors."""

    def __init__(self, runs: int) -> None:
        self.expected = runs
        self.claim_latencies: list[float] = []
        self.seen: set[uuid.UUID | str] = set()
        self.duplicates = 0  # runs handed out by more than one claim, as the workers saw it
        self.completed = 0
        self.errors: dict[str, int] = {}

    def claimed(self, run_id: uuid.UUID | str) -> None:
        if run_id in self.seen:
            self.duplicates += 1
        self.seen.add(run_id)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def result(self, seconds: float) -> dict[str, Any]:
        return {
            "runs": self.completed,
            "expected": self.expected,
            "duplicates": self.duplicates,
            "errors": sum(self.errors.values()),
            "error_kinds": self.errors,
            "seconds": round(seconds, 2),
            "runs_per_second": round(self.completed / seconds) if seconds else 0,
            "claims": len(self.claim_latencies),
            "claim_p50_ms": round(1000 * percentile(self.claim_latencies, 0.5), 2),
            "claim_p99_ms": round(1000 * percentile(self.claim_latencies, 0.99), 2),
        }


async def drain_in_process(url: str, runs: int, workers: int, batch: int = BATCH) -> dict[str, Any]:
    """`workers` tasks on FlowForge's engine (one pooled connection each) claim
    `batch` runs at a time and complete each in its own transaction until the
    queue is empty."""
    from flowforge.core.errors import AppError
    from flowforge.db.engine import DB
    from flowforge.domain import queue
    from flowforge.domain import runs as run_ops

    drain = Drain(runs)

    async def worker(number: int) -> None:
        while True:
            started = time.perf_counter()
            async with DB.transaction():
                claimed = await queue.claim_runs(f"w{number}", limit=batch)
            drain.claim_latencies.append(time.perf_counter() - started)
            if not claimed:
                return
            for run in claimed:
                drain.claimed(run["id"])
                try:
                    async with DB.transaction():
                        await run_ops.transition_run(run["id"], "complete")
                except AppError as error:  # e.g. a run completed by another claim
                    drain.error(f"complete: {type(error).__name__}")
                else:
                    drain.completed += 1

    async with engine_on(url, workers):
        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(workers)))
        seconds = time.perf_counter() - started
    return drain.result(seconds)


async def drain_over_http(
    url: str, user: uuid.UUID, runs: int, workers: int, batch: int = BATCH
) -> dict[str, Any]:
    """The same drain through the real app under uvicorn (one worker, pool of
    `workers` + 2) and `workers` keep-alive clients with a worker-scope key."""
    from benchmarks.http import Connection, uvicorn_app
    from flowforge.db.engine import DB
    from flowforge.db.tables import Scope
    from flowforge.domain import api_keys

    async with engine_on(url, 1), DB.transaction():
        _, key = await api_keys.create_api_key(user, name="worker", scopes=[Scope.WORKER])
    headers = {"Authorization": f"Bearer {key}"}
    drain = Drain(runs)
    # Both bounds: `make bench`'s earlier sections leave their own in the environment.
    pool = str(workers + 2)
    app_env = {"DATABASE_URL": url, "DB_POOL_MIN_SIZE": pool, "DB_POOL_MAX_SIZE": pool}
    async with uvicorn_app(1, quiet=True, **app_env) as (base, _process):
        host, port = base.removeprefix("http://").split(":")

        async def worker(number: int) -> None:
            connection = Connection(host, int(port))
            body = json.dumps({"worker_id": f"http-{number}", "limit": batch}).encode()
            try:
                while True:
                    started = time.perf_counter()
                    status, payload = await request_json(
                        connection, "/api/v1/runs/claim", headers, body
                    )
                    drain.claim_latencies.append(time.perf_counter() - started)
                    if status != 200:
                        drain.error(f"claim: {status}")
                        return  # the others drain the rest; the check afterwards counts it
                    if not payload["runs"]:
                        return
                    for run in payload["runs"]:
                        drain.claimed(run["id"])
                        path = f"/api/v1/runs/{run['id']}/complete"
                        status = await connection.request("POST", path, headers)
                        if status == 200:
                            drain.completed += 1
                        else:
                            drain.error(f"complete: {status}")
            except (OSError, ValueError, asyncio.IncompleteReadError) as error:
                drain.error(f"transport: {type(error).__name__}")
            finally:
                connection.close()

        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(workers)))
        seconds = time.perf_counter() - started
    return drain.result(seconds)


async def verify(url: str) -> dict[str, int]:
    """From the database: runs claimed more than once, and runs not completed."""
    connection = await asyncpg.connect(url)
    try:
        row = await connection.fetchrow(
            "SELECT count(*) FILTER (WHERE claims > 1) AS claimed_twice, "
            "count(*) FILTER (WHERE status <> 'completed') AS left_over FROM workflow_runs"
        )
    finally:
        await connection.close()
    return {"claimed_twice": int(row["claimed_twice"]), "left": int(row["left_over"])}


async def drain(
    url: str, runs: int, workers: int, *, over_http: bool, app_url: str | None = None
) -> dict[str, Any]:
    """Stock `runs` pending runs in database `url`, drain them (in-process or
    over HTTP, the app on `app_url`: a pooler in front of `url`, or `url`), then
    check every run was claimed once and completed."""
    user, _ = await stock(url, WORKFLOWS, runs)
    target = app_url or url
    if over_http:
        result = await drain_over_http(target, user, runs, workers)
    else:
        result = await drain_in_process(target, runs, workers)
    return result | {"workers": workers} | await verify(url)


def failures(result: dict[str, Any]) -> list[str]:
    """What went wrong in a drain section's results (empty: nothing)."""
    found = []
    for name in ("drain_in_process", "drain_http"):
        row = result.get(name)
        if not isinstance(row, dict):
            continue
        problems = [
            f"{row[field]} {label}"
            for field, label in (
                ("duplicates", "handed out twice"),
                ("claimed_twice", "claimed twice"),
                ("errors", "errors"),
                ("left", "not completed"),
            )
            if row.get(field)
        ]
        if problems:
            found.append(f"queue {name}: {', '.join(problems)}")
    return found


# `make bench`'s drain section, sized to take 1-2 minutes with its set-up on the
# shared 2 cores: 20,000 runs a side took 3.5 minutes there at a load average of
# 9 (316 runs/s in-process, 201 over HTTP), 10,000 about half that.
SECTION_RUNS = 10_000
QUICK_SECTION_RUNS = 2_000
SECTION_WORKERS = 20


async def run_section(
    *, runs: int, workers: int, route: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """`make bench`'s queue section: the drain in-process, then over HTTP, each
    of `runs` runs by `workers` workers, in database ``<BENCH_DATABASE>_queue``
    (created and migrated for it, dropped after). `route`: the URL FlowForge
    connects to for a database URL (a pooler in front of it), else direct."""
    name = f"{dataset.DATABASE}_queue"
    url = await fresh_database(name)
    app_url = route(url) if route else url
    result: dict[str, Any] = {"database": name, "runs": runs, "workers": workers,
                              "batch": BATCH}  # fmt: skip
    try:
        for side, over_http in (("drain_in_process", False), ("drain_http", True)):
            result[side] = await drain(url, runs, workers, over_http=over_http, app_url=app_url)
            row = result[side]
            print(
                f"  queue {side:<17} {row['runs']:,} runs in {row['seconds']:.1f}s: "
                f"{row['runs_per_second']} runs/s, claim p50 {row['claim_p50_ms']} ms "
                f"p99 {row['claim_p99_ms']} ms; duplicates {row['duplicates']}, claimed twice "
                f"{row['claimed_twice']}, errors {row['errors']}, left {row['left']}",
                flush=True,
            )
    finally:
        await drop_database(name)
    return result


def format_table(result: dict[str, Any]) -> str:
    header = (
        f"{'queue drain':<20} {'workers':>7} {'runs':>8} {'runs/s':>8} {'claim p50 ms':>13} "
        f"{'claim p99 ms':>13} {'twice':>6} {'errors':>7} {'left':>6}"
    )
    lines = [header, "-" * len(header)]
    for side, label in (("drain_in_process", "in-process"), ("drain_http", "over HTTP")):
        row = result.get(side)
        if not isinstance(row, dict):
            continue
        lines.append(
            f"{label:<20} {row['workers']:>7} {row['runs']:>8} {row['runs_per_second']:>8} "
            f"{row['claim_p50_ms']:>13.2f} {row['claim_p99_ms']:>13.2f} "
            f"{row['duplicates'] + row['claimed_twice']:>6} {row['errors']:>7} {row['left']:>6}"
        )
    lines.append(
        f"each worker claims {result.get('batch', BATCH)} runs at a time and completes each "
        "(its own transaction; over HTTP: POST /runs/claim, POST /runs/{id}/complete, one "
        "uvicorn worker); twice: runs handed out by two claims (workers' view + the runs' "
        "claim counter); left: runs not completed. All three must be 0."
    )
    return "\n".join(lines)


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
    from flowforge.core.settings import get_settings
    from flowforge.db.engine import session_settings
    from flowforge.db.sql import queue as queue_sql

    # FlowForge's session settings (timeouts, jit off), as its engine connects.
    pool = await asyncpg.create_pool(
        url, min_size=claimers, max_size=claimers,
        server_settings=session_settings(get_settings()),
    )  # fmt: skip
    latencies: list[float] = []
    empty = [0]
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
                latencies.append(time.perf_counter() - started)
                # Nothing left unlocked by the other claimers (each locks a fair
                # share plus one run per workflow): counted, not a failure.
                empty[0] += not rows

    try:
        await asyncio.gather(*(claimer(n) for n in range(claimers)))
    finally:
        await pool.close()
    return {
        "claimers": claimers,
        "claims_per_second": round(len(latencies) / seconds),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
        "empty_claims": empty[0],
    }


DEPTH_CLAIMERS = (1, 8)
MIN_DEPTH = 20 * WORKFLOWS


async def depth_study(
    database: str, depths: list[int], *, rounds: int, seconds: float
) -> dict[str, Any]:
    """Claim rate against queue depth, judged as a ratio over interleaved rounds.

    One database per depth (``<database>_d<depth>``, stocked once: D pending
    runs over WORKFLOWS workflows), then for 1 and 8 claimers, `rounds` rounds
    that each measure every depth for `seconds` (claims of 10 rolled back, so
    the depth stays D), the order reversed every other round (ABBA): a noisy
    neighbour slows both sides of a round alike. Per round, the deepest queue's
    claims/s over the shallowest's; the median of those and their spread are
    the verdict (1.0: depth costs nothing).
    """
    urls = {}
    for depth in depths:
        urls[depth] = await fresh_database(f"{database}_d{depth}")
        started = time.perf_counter()
        await stock(urls[depth], WORKFLOWS, depth)
        print(f"depth {depth:,} stocked in {time.perf_counter() - started:.0f}s", flush=True)
    shallow, deep = depths[0], depths[-1]
    study: dict[str, Any] = {"depths": depths, "rounds": rounds, "seconds": seconds,
                             "workflows": WORKFLOWS, "claimers": {}}  # fmt: skip
    try:
        for claimers in DEPTH_CLAIMERS:
            await claim_at_depth(urls[shallow], claimers, min(seconds, 1.0))  # warm-up
            per_depth: dict[int, list[dict[str, Any]]] = {depth: [] for depth in depths}
            ratios = []
            for index in range(rounds):
                order = depths if index % 2 == 0 else depths[::-1]
                for depth in order:
                    per_depth[depth].append(await claim_at_depth(urls[depth], claimers, seconds))
                ratios.append(
                    per_depth[deep][-1]["claims_per_second"]
                    / max(per_depth[shallow][-1]["claims_per_second"], 1)
                )
            study["claimers"][str(claimers)] = {
                "per_depth": {
                    str(depth): {
                        "claims_per_second": statistics.median(
                            row["claims_per_second"] for row in rows
                        ),
                        "p50_ms": statistics.median(row["p50_ms"] for row in rows),
                        "p99_ms": statistics.median(row["p99_ms"] for row in rows),
                        "rounds": rows,
                    }
                    for depth, rows in per_depth.items()
                },
                "deep_over_shallow": statistics.median(ratios),
                "ratio_spread": [min(ratios), max(ratios)],
                "ratio_rounds": ratios,
            }
    finally:
        for depth in depths:
            await drop_database(f"{database}_d{depth}")
    return study


def format_depth_study(study: dict[str, Any]) -> str:
    shallow, deep = study["depths"][0], study["depths"][-1]
    header = (
        f"{'claim of 10 vs depth':<22} {'claimers':>8} "
        + " ".join(f"{f'{d:,} claims/s (p99 ms)':>26}" for d in study["depths"])
        + f" {f'{deep:,} / {shallow:,} [rounds]':>28}"
    )
    lines = [header, "-" * len(header)]
    for claimers, row in study["claimers"].items():
        cells = " ".join(
            f"{row['per_depth'][str(d)]['claims_per_second']:>14.0f} "
            f"({row['per_depth'][str(d)]['p99_ms']:>7.1f})    "
            for d in study["depths"]
        )
        low, high = row["ratio_spread"]
        lines.append(
            f"{'':<22} {claimers:>8} {cells} "
            f"{row['deep_over_shallow']:>10.2f} [{low:.2f}-{high:.2f}]"
        )
    lines.append(
        f"median of {study['rounds']} ABBA rounds of {study['seconds']:g} s per depth "
        f"({study['workflows']} workflows); ratio: claims/s at the deepest queue over the "
        "shallowest, per round (1.0: depth costs nothing)"
    )
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--http-runs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument(
        "--depths",
        default="10000,1000000",
        help="queue depths of the depth study, each a database of its own",
    )
    parser.add_argument(
        "--depth-rounds", type=int, default=7, help="ABBA rounds of the depth study (default 7)"
    )
    parser.add_argument(
        "--depth-seconds",
        type=float,
        default=3.0,
        help="seconds of claiming per depth per round (default 3)",
    )
    parser.add_argument("--skip-depths", action="store_true", help="only the drains")
    parser.add_argument("--skip-drains", action="store_true", help="only the depth study")
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args()
    if args.depth_rounds < 1 or args.depth_seconds <= 0:
        parser.error("--depth-rounds must be at least 1 and --depth-seconds positive")
    try:
        if min(int(d) for d in args.depths.split(",")) < MIN_DEPTH:
            parser.error(
                f"--depths: each at least {MIN_DEPTH} (8 claimers, each locking a fair "
                f"share plus one run of each of {WORKFLOWS} workflows, need runs to claim)"
            )
    except ValueError:
        parser.error("--depths: comma-separated integers, e.g. 10000,1000000")
    database = os.environ.get("BENCH_DATABASE", DEFAULT_DATABASE)
    os.environ.setdefault("FLOWFORGE_ENV", "test")
    result: dict[str, Any] = {"cores": os.cpu_count()}
    depths = sorted(int(d) for d in args.depths.split(","))
    if args.skip_depths:
        result["depth_study"] = None
    else:
        result["depth_study"] = await depth_study(
            database, depths, rounds=args.depth_rounds, seconds=args.depth_seconds
        )
        print(format_depth_study(result["depth_study"]), flush=True)
    if not args.skip_drains:
        url = await fresh_database(database)
        result["drain_in_process"] = await drain(url, args.runs, args.workers, over_http=False)
        print("in-process", result["drain_in_process"], flush=True)
        if not args.skip_http:
            result["drain_http"] = await drain(url, args.http_runs, args.workers, over_http=True)
            print("http", result["drain_http"], flush=True)
    # Kept runs are renamed by hand to queue-<date>.json (docs cite them).
    out = dataset.REPO_ROOT / "benchmarks" / "results" / "queue-latest.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    problems = failures(result)
    for problem in problems:
        print(f"ERROR: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
