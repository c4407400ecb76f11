"""`make bench` / `python -m benchmarks`: FlowForge's hot paths against the raw-asyncpg floor.

Prints a table and writes JSON to benchmarks/results/. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
# Rounds per comparison: enough that two runs on an idle machine agree within
# +/-0.1 on every ratio (measured: benchmarks/README.md, "Rounds"); --quick
# only shows that everything runs.
DEFAULT_ROUNDS = 9
QUICK_ROUNDS = 3
DEFAULT_ROUND_SECONDS = 0.5


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: small data set, few rounds; shows the benchmark works, not a verdict",
    )
    parser.add_argument(
        "--runs", type=int, help="workflow runs in the data set (default 1,000,000)"
    )
    parser.add_argument("--workflows", type=int, help="workflows (default 10,000)")
    parser.add_argument("--users", type=int, help="users (default 1,000)")
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"A/B rounds per comparison (default {DEFAULT_ROUNDS}; quick {QUICK_ROUNDS})",
    )
    parser.add_argument(
        "--operations", type=int, help="operations per round (default 400; quick 150)"
    )
    parser.add_argument(
        "--round-seconds",
        type=float,
        help="each side of a round lasts at least this long (default 0.5; quick 0: "
        "--operations calls)",
    )
    parser.add_argument(
        "--http-seconds", type=float, help="HTTP load duration (default 20; quick 5)"
    )
    parser.add_argument("--only", help="comma-separated operation names to run")
    parser.add_argument(
        "--skip-http",
        action="store_true",
        help="skip the HTTP runs (unless --workers is given); the queue's drain over HTTP "
        "is --skip-queue's",
    )
    parser.add_argument(
        "--skip-queue",
        action="store_true",
        help="skip the run queue's drain (in-process and over HTTP, in a database of its own)",
    )
    parser.add_argument(
        "--queue-runs",
        type=int,
        help="runs each drain of the queue section empties (default 10,000; quick 2,000)",
    )
    parser.add_argument(
        "--queue-workers",
        type=int,
        help="workers (in-process tasks, HTTP clients) of each drain (default 20)",
    )
    parser.add_argument(
        "--skip-ops", action="store_true", help="skip the FlowForge-vs-floor comparisons"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="reload the data set even if it matches"
    )
    parser.add_argument(
        "--pgbouncer",
        action="store_true",
        help="FlowForge and the floor connect through a PgBouncer (transaction mode) "
        "started for the run (DATABASE_POOLER=transaction)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="uvicorn workers of the multi-worker HTTP run (default: one per core, 4 to 8)",
    )
    parser.add_argument(
        "--clients", type=int, default=200, help="clients of the multi-worker run (default 200)"
    )
    parser.add_argument(
        "--pool-max",
        type=int,
        help="pool max per worker (default: the server's free connections shared out, <= 20)",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="FILE",
        help="an earlier result (JSON): exit 1 if a ratio got worse beyond both runs' spread",
    )
    parser.add_argument("--out", type=Path, help="JSON output path")
    args = parser.parse_args(argv)
    names = ("runs", "workflows", "users", "rounds", "operations", "workers", "clients", "pool_max",
             "queue_runs", "queue_workers")  # fmt: skip
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.round_seconds is not None and args.round_seconds < 0:
        parser.error("--round-seconds must not be negative")
    if args.http_seconds is not None and args.http_seconds <= 0:
        parser.error("--http-seconds must be positive")
    if args.compare is not None:
        # Read now, not after the whole run: a wrong path is a usage error.
        from benchmarks.compare import BadResult, load

        try:
            args.previous = load(args.compare)
        except BadResult as error:
            parser.error(f"--compare: {error}")
    return args


async def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from benchmarks import dataset, http, http_floor, ops
    from benchmarks import queue as run_queue
    from benchmarks.harness import SMOKE_BANNER, format_table

    base = dataset.Sizes.quick() if args.quick else dataset.Sizes()
    sizes = dataset.Sizes(
        users=args.users or base.users,
        workflows=args.workflows or base.workflows,
        runs=args.runs or base.runs,
    )
    if sizes.workflows < dataset.BUSY_WORKFLOWS or sizes.users > sizes.workflows:
        print(f"need at least {dataset.BUSY_WORKFLOWS} workflows and no more users than workflows")
        return 2
    only = set(args.only.split(",")) if args.only else None
    if only and (unknown := only - set(ops.OPERATIONS)):
        print(
            f"unknown operation(s) {', '.join(sorted(unknown))}; known: {', '.join(ops.OPERATIONS)}"
        )
        return 2
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
    operations = args.operations or (150 if args.quick else 400)
    http_seconds = args.http_seconds or (5.0 if args.quick else 20.0)
    if args.round_seconds is not None:
        round_seconds = args.round_seconds
    else:
        round_seconds = 0.0 if args.quick else DEFAULT_ROUND_SECONDS
    smoke = args.quick
    queue_runs = args.queue_runs or (
        run_queue.QUICK_SECTION_RUNS if args.quick else run_queue.SECTION_RUNS
    )
    queue_workers = args.queue_workers or run_queue.SECTION_WORKERS
    # The multi-worker HTTP run is part of every run with the HTTP runs (and of
    # any run given --workers); its pools are sized now, before anything else
    # holds connections, so a size that cannot fit stops the run at once.
    budget = None
    if args.workers or not args.skip_http:
        try:
            budget = await http.pool_budget(args.workers or http.default_workers(), args.pool_max)
        except ValueError as error:
            print(error)
            return 2
    started = time.perf_counter()

    if smoke:
        print(SMOKE_BANNER, flush=True)
    print(f"data set: {sizes} ...", flush=True)
    loaded = await dataset.prepare(sizes, fresh=args.fresh)
    print(
        f"data set ready: {loaded.rows_loaded:,} rows loaded in {loaded.load_seconds:.1f}s "
        f"({loaded.rows_loaded / max(loaded.load_seconds, 1e-9):,.0f} rows/s)",
        flush=True,
    )
    async with contextlib.AsyncExitStack() as stack:
        if args.pgbouncer:
            from tests.pgbouncer import pgbouncer, via

            port = await stack.enter_async_context(pgbouncer(dataset.server_url()))
            os.environ["BENCH_APP_DATABASE_URL"] = via(port, dataset.database_url())
            os.environ["DATABASE_POOLER"] = "transaction"
            print(f"through PgBouncer (transaction mode) on 127.0.0.1:{port}", flush=True)
        summaries: list[dict[str, Any]] = []
        if not args.skip_ops:
            summaries = await ops.run_all(
                loaded, rounds=rounds, operations=operations, only=only, round_seconds=round_seconds
            )
            print()
            print(format_table(summaries, smoke=smoke))

        http_floor_rows: list[dict[str, Any]] = []
        if not args.skip_http:
            # Each hot route through the app under uvicorn vs the work it wraps in-process.
            http_floor_rows = await http_floor.run_all(
                loaded, rounds=rounds, operations=max(100, operations // 2)
            )
            print()
            print(http_floor.format_table(http_floor_rows))
        http_results: dict[str, Any] = {}
        if not args.skip_http:
            http_results = await http.run_all(loaded, seconds=http_seconds)
        if budget is not None:
            http_results |= await http.many_workers(
                loaded, budget=budget, clients=args.clients, seconds=http_seconds
            )
        if http_results:
            print()
            print(http.format_results(http_results))

        queue_results: dict[str, Any] = {}
        if not args.skip_queue:
            # The run queue's drain (issue 18), in a database of its own: the
            # data set's pending runs stay as they are for the next run.
            print(f"\nqueue: {queue_runs:,} runs, {queue_workers} workers ...", flush=True)
            route = None
            if args.pgbouncer:
                from tests.pgbouncer import via

                route = functools.partial(via, port)
            queue_results = await run_queue.run_section(
                runs=queue_runs, workers=queue_workers, route=route
            )
            print()
            print(run_queue.format_table(queue_results))

    worst = max((row["cost_ratio"] for row in summaries), default=float("nan"))
    report = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(),
        "smoke": smoke,
        "verdict": "smoke run (--quick): not a verdict" if smoke else "full run",
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "through": "pgbouncer" if args.pgbouncer else "direct",
        "sizes": loaded.sizes.__dict__,
        "load": {"rows": loaded.rows_loaded, "seconds": loaded.load_seconds},
        "rounds": rounds,
        "operations_per_round": operations,
        "round_seconds": round_seconds,
        "comparisons": summaries,
        "http_vs_in_process": http_floor_rows,
        "http": http_results,
        "queue": queue_results,
        "worst_cost_ratio": worst,
        "seconds": time.perf_counter() - started,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = args.out or RESULTS / f"bench-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nworst cost ratio {worst:.2f}; {time.perf_counter() - started:.0f}s; wrote {out}")
    if smoke:
        print(SMOKE_BANNER)
    status = 0
    failed = [f"{row['operation']} c={row['concurrency']}"
              for row in [*summaries, *http_floor_rows] if row["errors"]]  # fmt: skip
    failed += [name for name, row in http_results.items()
               if isinstance(row, dict) and row.get("errors")]  # fmt: skip
    failed += run_queue.failures(queue_results)
    if failed:
        print(f"ERRORS (must be 0): {', '.join(failed)}")
        status = 1
    if args.compare is not None:
        from benchmarks.compare import report as compare_report

        print()
        if compare_report(args.previous, report, args.compare.name, out.name):
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
