"""The online partitioning migration, and retention by partition drop against
today's batched DELETE, on the 1M-run data set.

    python -m benchmarks.partitions [--runs N] [--fresh] [--out PATH]

1. A base database is built once (reused while its sizes and migrations match):
   migrated up to the schema *before* time partitioning, then loaded with the
   benchmark data set (benchmarks/dataset.py: 1M runs over 90 days, ~2 step logs
   per started run, ~2 outbox events per run). As production would look, runs
   left ``running`` past the reaper's lease were failed at the time (finished 5
   minutes after they started): a stuck run does not live for 90 days.
2. ``delete``: a copy of the base (``CREATE DATABASE ... TEMPLATE``), pruned by
   today's batched DELETE (``flowforge.jobs.retention`` on the unpartitioned tables).
3. ``partition``: another copy. The ``run_created_at`` column is added (the
   migration before), then the partitioning migration runs forwards, backwards
   and forwards again (``piccolo migrations ...``), each while a writer keeps
   inserting a run, a step log and an outbox event per transaction: reported
   are the total time, the longest step holding an ACCESS EXCLUSIVE lock (as the
   migration prints it), the writer's transactions and its longest and p99
   latency, and whether every row (the base's and the writer's) is still there.
   Then, for the retention comparison, the legacy partitions' rows are spread
   into partitions of their own periods (``spread_legacy``: the layout a
   database has once the data set's 90 days were written after the migration;
   a copy the benchmark makes, not something production does), vacuumed and
   analysed like the base, and pruned by ``flowforge.jobs.retention.prune`` (whole
   partitions dropped, batched DELETE for the rest).

For each prune: seconds, WAL written (``pg_current_wal_lsn()`` difference, the
whole server's: the machine is shared, so other work shows up too - compare the
orders of magnitude), rows left, and table sizes (with partitions and indexes)
after. Retention uses the real clock; the data set ends on 2026-11-01.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from benchmarks import dataset

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
# The last migration before time partitioning: the base data set's schema.
BEFORE_PARTITIONING = "2026-11-30T00:34:16:765662"
RUN_CREATED_AT = "2026-11-30T00:39:47:879988"
PARTITIONING = "2026-11-30T00:39:50:000000"
PREFIX = os.environ.get("BENCH_DATABASE_PREFIX", "flowforge_bench_partitions")
TABLES = ["workflow_runs", "run_step_logs", "outbox"]


def url_for(database: str) -> str:
    return urlunsplit(urlsplit(dataset.server_url())._replace(path=f"/{database}"))


def piccolo(*args: str, database: str, env: dict[str, str] | None = None) -> float:
    """Run the real CLI against `database`; returns the seconds it took."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "piccolo.main", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "DATABASE_URL": url_for(database), **(env or {})},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if result.returncode != 0:
        raise SystemExit(f"piccolo {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return time.perf_counter() - started


async def write_while(database: str, running: asyncio.Future[Any]) -> dict[str, Any]:
    """Until `running` is done: one transaction at a time, each a new run, its
    step log and an event, as the API writes them; their latencies."""
    connection = await asyncpg.connect(url_for(database))
    latencies: list[float] = []
    try:
        workflow = await connection.fetchval("SELECT id FROM workflows LIMIT 1")
        while not running.done():
            started = time.perf_counter()
            async with connection.transaction():
                run = await connection.fetchrow(
                    "INSERT INTO workflow_runs (workflow_id, status, started_at) "
                    "VALUES ($1, 'running', now()) RETURNING id, created_at",
                    workflow,
                )
                assert run is not None
                await connection.execute(
                    "INSERT INTO run_step_logs (run_id, run_created_at, step_position, "
                    "step_name, status, started_at) VALUES ($1, $2, 0, 's', 'running', now())",
                    run["id"],
                    run["created_at"],
                )
                await connection.execute(
                    "INSERT INTO outbox (aggregate_type, aggregate_id, event_type) "
                    "VALUES ('workflow_run', $1, 'run.started')",
                    run["id"],
                )
            latencies.append(time.perf_counter() - started)
    finally:
        await connection.close()
    latencies.sort()
    return {
        "transactions": len(latencies),
        "max_seconds": round(latencies[-1], 4) if latencies else None,
        "p99_seconds": round(latencies[int(len(latencies) * 0.99)], 4) if latencies else None,
    }


STEP = re.compile(r"^\[partitioning\] (.+?): ([0-9.]+) s$", re.MULTILINE)


async def measure_migration(database: str, label: str, *args: str) -> dict[str, Any]:
    """One migration command with a writer running beside it: total seconds, the
    steps the migration printed, the longest one under ACCESS EXCLUSIVE, what the
    writer saw, rows after (the writer's rows included)."""
    before = await counts(database)
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "piccolo.main", *args,
        cwd=REPO_ROOT, env={**os.environ, "DATABASE_URL": url_for(database)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output = asyncio.ensure_future(process.communicate())
    writer = await write_while(database, output)
    stdout, _ = await output
    seconds = time.perf_counter() - started
    text = stdout.decode()
    if process.returncode != 0:
        raise SystemExit(f"piccolo {' '.join(args)} failed:\n{text}")
    steps = {match[1]: float(match[2]) for match in STEP.finditer(text)}
    exclusive = {step: value for step, value in steps.items() if "(exclusive)" in step}
    rows = await counts(database)
    result = {
        "seconds": round(seconds, 2),
        "steps": steps,
        "longest_exclusive_seconds": max(exclusive.values(), default=0.0),
        "longest_exclusive_step": max(exclusive, key=exclusive.__getitem__, default=None),
        "writer": writer,
        "rows_after": rows,
        "rows_kept": all(rows[table] == before[table] + writer["transactions"] for table in TABLES),
    }
    print(
        f"{label}: {seconds:.1f} s; longest exclusive step {result['longest_exclusive_seconds']:.3f} s "
        f"({result['longest_exclusive_step']}); writer {writer['transactions']} transactions, "
        f"max {writer['max_seconds']} s, p99 {writer['p99_seconds']} s; rows kept "
        f"{result['rows_kept']}",
        flush=True,
    )
    return result


# The legacy partitions' rows moved into partitions of their own periods (see
# the module docstring, 3): what the retention comparison needs.
SPREAD: dict[str, tuple[str, str, str]] = {
    "outbox": ("created_at", "day", "YYYYMMDD"),
    "run_step_logs": ("run_created_at", "month", "YYYYMM"),
}


async def spread_legacy(database: str) -> dict[str, Any]:
    connection = await asyncpg.connect(url_for(database))
    started = time.perf_counter()
    try:
        async with connection.transaction():
            await connection.execute("SET LOCAL TimeZone = 'UTC'")
            for table, (key, period, suffix) in SPREAD.items():
                legacy = f"{table}_legacy"
                await connection.execute(f"ALTER TABLE {table} DETACH PARTITION {legacy}")
                for row in await connection.fetch(
                    f"SELECT DISTINCT date_trunc('{period}', {key}) AS start, "
                    f"to_char(date_trunc('{period}', {key}), '{suffix}') AS name FROM {legacy}"
                ):
                    start = row["start"]
                    end = (
                        start + datetime.timedelta(days=1)
                        if period == "day"
                        else (start + datetime.timedelta(days=32)).replace(day=1)
                    )
                    # Loaded, then attached: its indexes built in bulk, as a
                    # partition filled over time would have them (not in legacy
                    # order; named by PostgreSQL: prune does not read the names).
                    name = f"{table}_p{row['name']}"
                    await connection.execute(
                        f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS "
                        "INCLUDING CONSTRAINTS)"
                    )
                    await connection.execute(
                        f"INSERT INTO {name} SELECT * FROM {legacy} "
                        f"WHERE {key} >= $1 AND {key} < $2",
                        start,
                        end,
                    )
                    await connection.execute(
                        f"ALTER TABLE {table} ATTACH PARTITION {name} "
                        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
                    )
                await connection.execute(f"DROP TABLE {legacy}")
    finally:
        await connection.close()
    seconds = time.perf_counter() - started
    print(f"spread the legacy partitions: {seconds:.1f} s", flush=True)
    return {"seconds": round(seconds, 2)}


def migrate_before_partitioning(database: str) -> None:
    piccolo("migrations", "forwards", "user", database=database)
    piccolo("migrations", "forwards", "session_auth", database=database)
    piccolo(
        "migrations", "forwards", "flowforge", f"--migration_id={BEFORE_PARTITIONING}",
        database=database,
    )  # fmt: skip


async def with_run_created_at(database: str) -> None:
    """The unpartitioned tables as today's prune reads them: the column the
    partitioning migration's predecessor adds, filled (in one UPDATE, then
    VACUUM ANALYZE so the DELETE side starts from clean pages; not measured)."""
    piccolo("migrations", "forwards", "flowforge", f"--migration_id={RUN_CREATED_AT}",
            database=database)  # fmt: skip
    connection = await asyncpg.connect(url_for(database))
    try:
        await connection.execute("SET statement_timeout = 0")
        await connection.execute(
            "UPDATE run_step_logs l SET run_created_at = r.created_at "
            "FROM workflow_runs r WHERE r.id = l.run_id"
        )
        await connection.execute("VACUUM ANALYZE run_step_logs")
    finally:
        await connection.close()


# What the reaper would have done to runs stuck in `running` when their lease
# expired (the data set is generated without the reaper running).
REAPED_AT_THE_TIME = """
WITH stuck AS (
    UPDATE workflow_runs
    SET status = 'failed', error = 'lease expired', finished_at = started_at + interval '5 minutes'
    WHERE status = 'running' AND started_at < now() - interval '1 day'
    RETURNING id, finished_at
)
UPDATE run_step_logs l SET status = 'failed', error = 'lease expired', finished_at = s.finished_at
FROM stuck s WHERE l.run_id = s.id AND l.status = 'running'
"""


async def build_base(sizes: dataset.Sizes, *, fresh: bool) -> str:
    base = f"{PREFIX}_base"
    marker = json.dumps({"sizes": asdict(sizes), "before": BEFORE_PARTITIONING})
    admin = await asyncpg.connect(dataset.server_url())
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", base)
        if exists and not fresh:
            found = await admin.fetchval(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
                base,
            )
            if found == marker:
                return base
        await admin.execute(f'DROP DATABASE IF EXISTS "{base}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{base}"')
    finally:
        await admin.close()
    migrate_before_partitioning(base)
    connection = await asyncpg.connect(url_for(base))
    try:
        loaded = await dataset.load(connection, sizes)
        await connection.execute("SET session_replication_role = origin")
        await connection.execute(REAPED_AT_THE_TIME)
        await connection.execute("VACUUM ANALYZE")
        print(f"base: {loaded.rows_loaded:,} rows in {loaded.load_seconds:.0f} s", flush=True)
    finally:
        await connection.close()
    admin = await asyncpg.connect(dataset.server_url())
    try:
        await admin.execute(f"COMMENT ON DATABASE \"{base}\" IS '{marker}'")
    finally:
        await admin.close()
    return base


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.partitions", description=__doc__)
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs (default 1,000,000)")
    parser.add_argument("--fresh", action="store_true", help="rebuild the base data set")
    parser.add_argument("--base-only", action="store_true", help="only build the base")
    parser.add_argument("--out", type=Path, help="JSON output path")
    args = parser.parse_args(argv)
    if args.runs < 1000:
        parser.error("--runs must be at least 1000")
    return args


def sizes_for(runs: int) -> dataset.Sizes:
    if runs >= 1_000_000:
        return dataset.Sizes(runs=runs)
    return dataset.Sizes(users=100, workflows=1_000, runs=runs)


# Sizes with indexes and TOAST; a partitioned table's are the sum of its partitions'.
SIZES = """
SELECT t.name,
    greatest(1, (SELECT count(*) FROM pg_partition_tree(t.name::regclass) WHERE isleaf))
        AS relations,
    coalesce(
        (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree(t.name::regclass)),
        pg_total_relation_size(t.name::regclass)
    )::bigint AS bytes
FROM unnest($1::text[]) AS t(name)
"""

# Each retention pass twice over: events only, then runs (with their step logs) only.
OUTBOX_ONLY = {"RUN_RETENTION_DAYS": "0"}
RUNS_ONLY = {"OUTBOX_RETENTION_DAYS": "0"}


async def measure(
    database: str, label: str, *args: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run one CLI command against `database`: seconds, WAL bytes, rows and sizes after."""
    connection = await asyncpg.connect(url_for(database))
    try:
        before = await connection.fetchval("SELECT pg_current_wal_lsn()")
        seconds = piccolo(*args, database=database, env=env)
        wal = await connection.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint", before
        )
        rows = {
            table: await connection.fetchval(f"SELECT count(*) FROM {table}") for table in TABLES
        }
        sizes = {
            row["name"]: {"bytes": row["bytes"], "relations": row["relations"]}
            for row in await connection.fetch(SIZES, TABLES)
        }
    finally:
        await connection.close()
    result = {
        "seconds": round(seconds, 2),
        "wal_bytes": wal,
        "rows_after": rows,
        "sizes_after": sizes,
    }
    print(f"{label}: {seconds:.1f} s, WAL {wal / 2**20:,.0f} MiB, rows {rows}", flush=True)
    return result


async def vacuum(database: str, *, analyze: bool = False) -> dict[str, Any]:
    """What a DELETE leaves for (auto)vacuum: VACUUM the three tables, timed, with WAL."""
    connection = await asyncpg.connect(url_for(database))
    try:
        before = await connection.fetchval("SELECT pg_current_wal_lsn()")
        started = time.perf_counter()
        await connection.execute(f"VACUUM {'(ANALYZE) ' if analyze else ''}{', '.join(TABLES)}")
        seconds = time.perf_counter() - started
        wal = await connection.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint", before
        )
        sizes = {row["name"]: row["bytes"] for row in await connection.fetch(SIZES, TABLES)}
    finally:
        await connection.close()
    print(f"  vacuum: {seconds:.1f} s, WAL {wal / 2**20:,.0f} MiB", flush=True)
    return {"seconds": round(seconds, 2), "wal_bytes": wal, "sizes_after": sizes}


async def counts(database: str) -> dict[str, int]:
    connection = await asyncpg.connect(url_for(database))
    try:
        return {
            table: await connection.fetchval(f"SELECT count(*) FROM {table}") for table in TABLES
        }
    finally:
        await connection.close()


async def main(argv: list[str]) -> int:
    args = parse_args(argv)
    sizes = sizes_for(args.runs)
    base = await build_base(sizes, fresh=args.fresh)
    if args.base_only:
        print(f"base ready: {base}")
        return 0
    report: dict[str, Any] = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(),
        "sizes": asdict(sizes),
        "retention_days": {"outbox": 7, "runs": 90},
        "base_rows": await counts(base),
    }
    print(f"base rows: {report['base_rows']}", flush=True)

    delete_db = f"{PREFIX}_delete"
    await dataset.clone(base, delete_db)
    events = await measure(
        delete_db, "batched DELETE, events", "flowforge", "prune", env=OUTBOX_ONLY
    )
    await with_run_created_at(delete_db)
    report["delete"] = {
        "events": events,
        "runs": await measure(
            delete_db, "batched DELETE, runs + logs", "flowforge", "prune", env=RUNS_ONLY
        ),
        "vacuum": await vacuum(delete_db),
    }

    partition_db = f"{PREFIX}_partition"
    await dataset.clone(base, partition_db)
    report["add_run_created_at"] = {
        "seconds": round(
            piccolo(
                "migrations", "forwards", "flowforge", f"--migration_id={RUN_CREATED_AT}",
                database=partition_db,
            ),
            2,
        )
    }  # fmt: skip
    report["migration_forwards"] = await measure_migration(
        partition_db, "migration forwards (online)", "migrations", "forwards", "all"
    )
    report["migration_backwards"] = await measure_migration(
        partition_db,
        "migration backwards (online)",
        "migrations", "backwards", "flowforge", f"--migration_id={PARTITIONING}", "--auto_agree",
    )  # fmt: skip
    report["migration_forwards_again"] = await measure_migration(
        partition_db, "migration forwards again (online)", "migrations", "forwards", "all"
    )
    report["spread_legacy"] = await spread_legacy(partition_db)
    # As the delete side's base was: visibility map and hint bits set, fresh
    # statistics (autovacuum would get there after the migration); timed apart.
    report["spread_legacy"]["vacuum"] = await vacuum(partition_db, analyze=True)
    report["partition"] = {
        "events": await measure(
            partition_db, "partition drop, events", "flowforge", "prune", env=OUTBOX_ONLY
        ),
        "runs": await measure(
            partition_db, "partition drop, runs + logs", "flowforge", "prune", env=RUNS_ONLY
        ),
        "vacuum": await vacuum(partition_db),
    }

    RESULTS.mkdir(exist_ok=True)
    out = args.out or RESULTS / f"partitions-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
