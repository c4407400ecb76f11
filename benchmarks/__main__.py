"""`make bench` / `python -m benchmarks`: FlowForge's hot paths against the raw-asyncpg floor.

Prints a table and writes JSON to benchmarks/results/. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small data set, fewer rounds (< 2 min)"
    )
    parser.add_argument(
        "--runs", type=int, help="workflow runs in the data set (default 1,000,000)"
    )
    parser.add_argument("--workflows", type=int, help="workflows (default 10,000)")
    parser.add_argument("--users", type=int, help="users (default 1,000)")
    parser.add_argument("--rounds", type=int, help="A/B rounds per comparison (default 5; quick 3)")
    parser.add_argument(
        "--operations", type=int, help="operations per round (default 400; quick 150)"
    )
    parser.add_argument(
        "--http-seconds", type=float, help="HTTP load duration (default 20; quick 5)"
    )
    parser.add_argument("--only", help="comma-separated operation names to run")
    parser.add_argument("--skip-http", action="store_true", help="skip the HTTP and pool runs")
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
        "--workers", type=int, help="also load N uvicorn workers (with --clients, --pool-max)"
    )
    parser.add_argument("--clients", type=int, default=200, help="clients for --workers")
    parser.add_argument("--pool-max", type=int, default=10, help="pool max per worker")
    parser.add_argument("--out", type=Path, help="JSON output path")
    args = parser.parse_args(argv)
    for name in ("runs", "workflows", "users", "rounds", "operations", "workers", "clients"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    if args.http_seconds is not None and args.http_seconds <= 0:
        parser.error("--http-seconds must be positive")
    return args


async def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from benchmarks import dataset, http, ops
    from benchmarks.harness import format_table

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
    rounds = args.rounds or (3 if args.quick else 5)
    operations = args.operations or (150 if args.quick else 400)
    http_seconds = args.http_seconds or (5.0 if args.quick else 20.0)
    started = time.perf_counter()

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
            summaries = await ops.run_all(loaded, rounds=rounds, operations=operations, only=only)
            print()
            print(format_table(summaries))

        http_results: dict[str, Any] = {}
        if not args.skip_http:
            http_results = await http.run_all(loaded, seconds=http_seconds)
        if args.workers:
            http_results |= await http.many_workers(
                loaded,
                workers=args.workers,
                clients=args.clients,
                pool_max=args.pool_max,
                seconds=http_seconds,
            )
        if http_results:
            print()
            print(http.format_results(http_results))

    worst = max((row["cost_ratio"] for row in summaries), default=float("nan"))
    report = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "through": "pgbouncer" if args.pgbouncer else "direct",
        "sizes": loaded.sizes.__dict__,
        "load": {"rows": loaded.rows_loaded, "seconds": loaded.load_seconds},
        "rounds": rounds,
        "operations_per_round": operations,
        "comparisons": summaries,
        "http": http_results,
        "worst_cost_ratio": worst,
        "seconds": time.perf_counter() - started,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = args.out or RESULTS / f"bench-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nworst cost ratio {worst:.2f}; {time.perf_counter() - started:.0f}s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
