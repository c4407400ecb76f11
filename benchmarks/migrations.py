"""Any range of migrations, run under load on the benchmark data set.

    python -m benchmarks.migrations (--from ID | --last N | --since GIT_REF) [--to ID]
        [--runs N] [--load-at ID] [--app-ref GIT_REF] [--writers N] [--readers N]
        [--fresh] [--base-only] [--out PATH]

1. **Base.** A database migrated to the schema just *before* the first migration
   under test and loaded with the benchmark data set (benchmarks/dataset.py; 1M
   runs by default; runs left ``running`` are failed as the reaper would have done
   at the time). ``--load-at ID`` loads the data at an earlier schema and then
   migrates (unmeasured) up to the one before the range, so that a migration's
   predecessors that only add empty columns leave them as production has them
   (NULL in old rows). Built once, reused while its sizes, migrations and
   ``--load-at`` match (``--fresh`` rebuilds); named ``<BENCH_DATABASE>_base``
   (default ``flowforge_bench_migrations_base``).
2. **Copy.** ``CREATE DATABASE <BENCH_DATABASE>_run TEMPLATE <base>``: the base is
   never migrated, every run starts from the same data.
3. **Load.** The app under uvicorn (one worker, the real HTTP stack) on the copy,
   with ``--writers`` keep-alive clients each doing a run's lifecycle (trigger,
   start, two step attempts, complete) and ``--readers`` clients reading (GET a run
   with its step logs, GET a page of a workflow's runs). ``--app-ref`` serves the
   app from another git revision (``git archive``; the release that runs while
   the migration does, when the current code needs the new schema).
4. **Forwards**, one migration at a time, through the real CLI
   (``piccolo migrations forwards flowforge --migration_id=ID``, which takes the
   migration lock like ``flowforge migrate``), then **backwards** one at a time
   (``piccolo migrations backwards flowforge --migration_id=ID --auto_agree``,
   newest first) and **forwards again**. For every step: wall time, the steps the
   migration printed itself (``[name] step: 1.234 s`` lines), the longest
   ACCESS EXCLUSIVE lock held on a table that existed before the step and the
   longest lock wait of any session (both sampled from ``pg_locks`` /
   ``pg_stat_activity`` every ``SAMPLE_SECONDS``: a hold shorter than that may be
   missed), and for the requests started during the step: count, errors (with
   the first messages), longest (the stall) and p99 latency.
5. **Rows.** After the backwards and after the final forwards: every row of the
   base (count and checksum of each key table over the columns it had in the
   base and still has, rows created before the load) is still there unchanged,
   and every run and step log the writers were told was created exists.

Targets (issue 17): no request longer than ``--max-stall`` (1 s), zero errors,
every row kept. The table prints; the JSON goes to benchmarks/results/
(``migrations-<time>.json``); the exit status is 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from benchmarks import dataset

REPO_ROOT = dataset.REPO_ROOT
RESULTS = Path(__file__).resolve().parent / "results"
MIGRATIONS = REPO_ROOT / "piccolo_migrations"
APP = "flowforge"
PREFIX = os.environ.get("BENCH_DATABASE", "flowforge_bench_migrations")
# The key tables whose base rows must survive every step.
KEY_TABLES = (
    "users", "workflows", "workflow_steps", "workflow_runs", "run_step_logs", "outbox", "api_keys",
)  # fmt: skip
SAMPLE_SECONDS = 0.05
MAX_STALL_SECONDS = 1.0
FIRST_ERRORS = 5

ID_LINE = re.compile(r'^ID = "([^"]+)"', re.MULTILINE)
# What a migration prints about its own steps (the partitioning migration and
# flowforge.db.online's helpers): "[name] step: 1.234 s".
STEP_LINE = re.compile(r"^\[[\w.-]+\] (.+?): ([0-9.]+) s$", re.MULTILINE)


def url_for(database: str) -> str:
    return urlunsplit(urlsplit(dataset.server_url())._replace(path=f"/{database}"))


# --- the range -----------------------------------------------------------------


def migration_ids(folder: Path = MIGRATIONS) -> list[str]:
    """FlowForge's migration IDs in the order Piccolo applies them (sorted IDs)."""
    ids = []
    for path in folder.glob("*.py"):
        found = ID_LINE.search(path.read_text())
        if found:
            ids.append(found[1])
    return sorted(ids)


def resolve(ids: list[str], given: str) -> str:
    """An ID from a unique prefix (``2026-12-07T15:58:32`` is enough)."""
    matches = [i for i in ids if i == given] or [i for i in ids if i.startswith(given)]
    if len(matches) != 1:
        raise SystemExit(
            f"migration {given!r} matches {len(matches)} migrations; known: {', '.join(ids)}"
        )
    return matches[0]


def git(*args: str) -> str:
    """A git command in this checkout; its output (exits with git's message on failure)."""
    executable = shutil.which("git")
    if executable is None:
        raise SystemExit("git is not installed")
    result = subprocess.run(
        [executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def ids_at(ref: str) -> set[str]:
    """The migration IDs a git revision has."""
    found = set()
    for name in git("ls-tree", "--name-only", ref, "piccolo_migrations/").split():
        if name.endswith(".py"):
            match = ID_LINE.search(git("show", f"{ref}:{name}"))
            if match:
                found.add(match[1])
    return found


@dataclass(frozen=True)
class Range:
    under_test: tuple[str, ...]
    before: str  # the base's schema: the migration just before the range
    load_at: str  # where the data set is loaded (before, or earlier)


def choose_range(args: argparse.Namespace, ids: list[str]) -> Range:
    if args.since:
        known = ids_at(args.since)
        new = [i for i in ids if i not in known]
        if not new:
            raise SystemExit(f"no migration in this checkout is missing at {args.since}")
        first = ids.index(new[0])
    elif args.last:
        first = len(ids) - args.last
    else:
        first = ids.index(resolve(ids, args.first))
    last = ids.index(resolve(ids, args.to)) if args.to else len(ids) - 1
    if first < 1:
        raise SystemExit("the range must leave at least one migration before it (the base)")
    if last < first:
        raise SystemExit("--to is before the start of the range")
    before = ids[first - 1]
    load_at = resolve(ids, args.load_at) if args.load_at else before
    if ids.index(load_at) > first - 1:
        raise SystemExit("--load-at must be at or before the migration before the range")
    return Range(tuple(ids[first : last + 1]), before, load_at)


# --- the base ------------------------------------------------------------------


def piccolo(*args: str, database: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "piccolo.main", *args],
        cwd=cwd,
        env={**os.environ, "DATABASE_URL": url_for(database)},
        capture_output=True,
        text=True,
        timeout=7200,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"piccolo {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


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


def sizes_for(runs: int) -> dataset.Sizes:
    if runs >= 1_000_000:
        return dataset.Sizes(runs=runs)
    return dataset.Sizes(users=max(10, runs // 1000), workflows=max(20, runs // 100), runs=runs)


def files_digest(upto: str) -> str:
    """The migration files up to `upto`: a base built by other files is rebuilt."""
    digest = hashlib.sha256()
    for path in sorted(MIGRATIONS.glob("*.py")):
        found = ID_LINE.search(path.read_text())
        if found and found[1] <= upto:
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


async def build_base(sizes: dataset.Sizes, span: Range, *, fresh: bool) -> str:
    base = f"{PREFIX}_base"
    marker = json.dumps(
        {
            "sizes": asdict(sizes),
            "load_at": span.load_at,
            "before": span.before,
            "files": files_digest(span.before),
        }
    )
    admin = await asyncpg.connect(dataset.server_url())
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", base)
        if exists and not fresh:
            found = await admin.fetchval(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
                base,
            )
            if found == marker:
                print(f"base: reusing {base}", flush=True)
                return base
        await admin.execute(f'DROP DATABASE IF EXISTS "{base}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{base}"')
    finally:
        await admin.close()
    started = time.perf_counter()
    piccolo("migrations", "forwards", "user", database=base)
    piccolo("migrations", "forwards", "session_auth", database=base)
    piccolo("migrations", "forwards", APP, f"--migration_id={span.load_at}", database=base)
    connection = await asyncpg.connect(url_for(base))
    try:
        await connection.execute("SET statement_timeout = 0")
        loaded = await dataset.load(connection, sizes)
        await connection.execute("SET session_replication_role = origin")
        await connection.execute(REAPED_AT_THE_TIME)
    finally:
        await connection.close()
    if span.load_at != span.before:
        piccolo("migrations", "forwards", APP, f"--migration_id={span.before}", database=base)
    connection = await asyncpg.connect(url_for(base))
    try:
        await connection.execute("SET statement_timeout = 0")
        await connection.execute("VACUUM ANALYZE")
    finally:
        await connection.close()
    admin = await asyncpg.connect(dataset.server_url())
    try:
        await admin.execute(f"COMMENT ON DATABASE \"{base}\" IS '{marker}'")
    finally:
        await admin.close()
    print(
        f"base: {loaded.rows_loaded:,} rows at {span.load_at}, migrated to {span.before}, "
        f"in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return base


async def clone(base: str, name: str) -> None:
    admin = await asyncpg.connect(dataset.server_url())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{base}" STRATEGY FILE_COPY')
    finally:
        await admin.close()


# --- command line --------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.migrations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--from", dest="first", metavar="ID", help="first migration under test")
    which.add_argument("--last", type=int, metavar="N", help="the last N migrations")
    which.add_argument(
        "--since", metavar="GIT_REF", help="the migrations this checkout has and GIT_REF has not"
    )
    parser.add_argument("--to", metavar="ID", help="last migration under test (default: newest)")
    parser.add_argument(
        "--load-at", metavar="ID", help="load the data set at this earlier schema (see 1.)"
    )
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs (default 1,000,000)")
    parser.add_argument(
        "--app-ref",
        metavar="GIT_REF",
        help="serve the app from this git revision (default: HEAD's files as checked out)",
    )
    parser.add_argument("--writers", type=int, default=2, help="writing clients (default 2)")
    parser.add_argument("--readers", type=int, default=2, help="reading clients (default 2)")
    parser.add_argument(
        "--settle", type=float, default=3.0, help="seconds of load before the first step (baseline)"
    )
    parser.add_argument(
        "--max-stall", type=float, default=MAX_STALL_SECONDS, help="target: longest request (s)"
    )
    parser.add_argument("--no-backwards", action="store_true", help="forwards only")
    parser.add_argument("--fresh", action="store_true", help="rebuild the base")
    parser.add_argument("--base-only", action="store_true", help="only build the base")
    parser.add_argument("--out", type=Path, help="JSON output path")
    args = parser.parse_args(argv)
    if args.runs < 1000:
        parser.error("--runs must be at least 1000")
    if args.last is not None and args.last < 1:
        parser.error("--last must be at least 1")
    if args.writers < 1 or args.readers < 0:
        parser.error("--writers must be at least 1 and --readers at least 0")
    return args


async def main(argv: list[str]) -> int:
    args = parse_args(argv)
    span = choose_range(args, migration_ids())
    sizes = sizes_for(args.runs)
    base = await build_base(sizes, span, fresh=args.fresh)
    if args.base_only:
        print(f"base ready: {base} (schema {span.before})")
        return 0
    raise NotImplementedError


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
