"""Any range of migrations, run under load on the benchmark data set.

    python -m benchmarks.migrations (--from ID | --last N | --since GIT_REF) [--to ID]
        [--runs N] [--load-at ID] [--app-ref GIT_REF] [--writers N] [--readers N]
        [--settle S] [--max-stall S] [--no-backwards] [--fresh] [--base-only] [--out PATH]

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
   app from another git revision (``git archive``): the release that serves while
   the migrations run (the current code may need the new schema). With
   ``--since REF`` it defaults to REF; otherwise to this checkout's files.
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
5. **Rows.** After each phase: the base rows of each key table (those created
   before the load) are counted and fingerprinted per column (non-NULL count and
   a checksum of the values) against the base database: none lost, none changed
   in a column that had values in the base (a column NULL in every base row may
   be filled: a backfill; ``updated_at`` restamped is listed apart); and every
   run, completion and step log the writers were answered for exists.

Targets (issue 17): no request longer than ``--max-stall`` (1 s), zero errors,
every row kept. The table prints; the JSON goes to benchmarks/results/
(``migrations-<time>.json``); the exit status is 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from benchmarks import dataset
from benchmarks.harness import percentile

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


# --- the app and its load ----------------------------------------------------


def app_tree(ref: str | None) -> Path:
    """Where the app is served from: this checkout, or `ref`'s files (git archive)."""
    if ref is None:
        return REPO_ROOT
    executable = shutil.which("git")
    if executable is None:
        raise SystemExit("git is not installed")
    archive = subprocess.run(
        [executable, "archive", "--format=tar", ref], cwd=REPO_ROOT, capture_output=True,
        check=False,
    )  # fmt: skip
    if archive.returncode != 0:
        raise SystemExit(f"git archive {ref}: {archive.stderr.decode().strip()}")
    target = Path(tempfile.mkdtemp(prefix="flowforge-app-"))
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return target


def app_env(tree: Path, database: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": url_for(database),
        "PYTHONPATH": str(tree),  # before the editable install of this checkout
        "FLOWFORGE_ENV": "test",
        "LOG_LEVEL": "WARNING",
        "DB_POOL_MIN_SIZE": "2",
        "DB_POOL_MAX_SIZE": "10",
    }


async def make_key(database: str, user: uuid.UUID) -> str:
    """An API key (read, write, admin) of the data set's admin, stored as every
    release stores one (``ff_<prefix>_<secret>``, its SHA-256): whatever code is
    served accepts it, and the key is made before the load, so it is a base row."""
    prefix = secrets.token_hex(8)
    key = f"ff_{prefix}_{secrets.token_urlsafe(32)}"
    connection = await asyncpg.connect(url_for(database))
    try:
        await connection.execute(
            "INSERT INTO api_keys (user_id, name, prefix, key_hash, scopes) "
            "VALUES ($1, 'bench-migrations', $2, $3, ARRAY['read', 'write', 'admin'])",
            user,
            prefix,
            hashlib.sha256(key.encode()).hexdigest(),
        )
    finally:
        await connection.close()
    return key


@contextlib.asynccontextmanager
async def serve(tree: Path, database: str) -> AsyncIterator[str]:
    """uvicorn flowforge.main:app (one worker) on a free port; yields its base URL.
    Up once /healthz answers (/readyz says 503 while migrations are pending)."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", "flowforge.main:app", "--port", str(port),
        "--log-level", "warning", "--no-access-log",
        cwd=tree, env=app_env(tree, database),
    )  # fmt: skip
    try:
        for _ in range(300):
            with contextlib.suppress(OSError, ValueError, ConnectionError):
                client = Client("127.0.0.1", port)
                status, _ = await client.request("GET", "/healthz", {})
                client.close()
                if status == 200:
                    break
            await asyncio.sleep(0.1)
        else:
            raise SystemExit("the app did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Client:
    """A minimal HTTP/1.1 keep-alive client (benchmarks/http.py's, keeping the body:
    an error's message is part of the report)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body or method == "POST":
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length, chunked = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding" and "chunked" in value:
                chunked = True
        if chunked:
            parts = []
            while (size := int((await self.reader.readline()).strip(), 16)) > 0:
                parts.append((await self.reader.readexactly(size + 2))[:-2])
            await self.reader.readline()
            return status, b"".join(parts)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@dataclass
class Sample:
    started: float  # time.monotonic()
    seconds: float
    ok: bool


@dataclass
class Load:
    """What the clients did: every request's timing, errors, the writers' rows."""

    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)  # created (201)
    completed: list[str] = field(default_factory=list)  # completed (200)
    step_logs: int = 0  # appended (201)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def window(self, start: float, end: float) -> dict[str, Any]:
        """The requests started in [start, end)."""
        chosen = [s for s in self.samples if start <= s.started < end]
        return summarize(chosen)


def summarize(samples: list[Sample]) -> dict[str, Any]:
    latencies = [s.seconds for s in samples]
    return {
        "requests": len(samples),
        "errors": sum(1 for s in samples if not s.ok),
        "max_ms": round(max(latencies, default=0.0) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1) if latencies else None,
    }


async def call(
    load: Load, client: Client, method: str, path: str, headers: dict[str, str],
    body: dict[str, Any] | None = None, expect: int = 200,
) -> dict[str, Any] | None:  # fmt: skip
    """One request, timed; its JSON on the expected status, None (an error noted) otherwise."""
    started = time.monotonic()
    payload = json.dumps(body).encode() if body is not None else b""
    try:
        status, text = await client.request(method, path, headers, payload)
    except (OSError, ValueError, ConnectionError, asyncio.IncompleteReadError) as error:
        client.close()
        status, text = 0, f"{type(error).__name__}: {error}".encode()
    seconds = time.monotonic() - started
    ok = status == expect
    load.samples.append(Sample(started, seconds, ok))
    if not ok:
        if len(load.errors) < FIRST_ERRORS * 4:
            load.errors.append(
                f"{method} {path} -> {status}: {text[:300].decode(errors='replace')}"
            )
        return None
    return json.loads(text) if text else {}


async def writer(load: Load, base: str, headers: dict[str, str], workflows: list[str]) -> None:
    """Run lifecycles back to back: trigger, start, two step attempts, complete."""
    host, port = base.removeprefix("http://").split(":")
    client = Client(host, int(port))
    n = 0
    try:
        while not load.stop.is_set():
            n += 1
            workflow = workflows[n % len(workflows)]
            run = await call(
                load, client, "POST", f"/api/v1/workflows/{workflow}/runs", headers,
                {"inputs": {"n": n}}, expect=201,
            )  # fmt: skip
            if run is None:
                continue
            run_id = str(run["id"])
            load.runs.append(run_id)
            if (
                await call(load, client, "POST", f"/api/v1/runs/{run_id}/start", headers, {})
                is None
            ):
                continue
            for position in (0, 1):
                appended = await call(
                    load, client, "POST", f"/api/v1/runs/{run_id}/step-logs", headers,
                    {"step_position": position, "status": "completed"}, expect=201,
                )  # fmt: skip
                if appended is not None:
                    load.step_logs += 1
            if (
                await call(load, client, "POST", f"/api/v1/runs/{run_id}/complete", headers, {})
                is not None
            ):
                load.completed.append(run_id)
    finally:
        client.close()


async def reader(
    load: Load, base: str, headers: dict[str, str], runs: list[str], workflows: list[str]
) -> None:
    """A run with its step attempts (an old one, or one the writers made), then a page of runs."""
    host, port = base.removeprefix("http://").split(":")
    client = Client(host, int(port))
    n = 0
    try:
        while not load.stop.is_set():
            n += 1
            run = load.runs[-1 - n % min(20, len(load.runs))] if n % 2 and load.runs else None
            run = run or runs[n % len(runs)]
            await call(load, client, "GET", f"/api/v1/runs/{run}", headers)
            workflow = workflows[n % len(workflows)]
            await call(load, client, "GET", f"/api/v1/workflows/{workflow}/runs?limit=50", headers)
    finally:
        client.close()


# --- locks -----------------------------------------------------------------------

# ACCESS EXCLUSIVE locks held on the tables that existed before the step ($1),
# and sessions waiting on a lock; this database only.
HELD = """
SELECT l.pid, l.relation::regclass::text AS relation, a.application_name AS app
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock' AND l.granted
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND l.relation = ANY($1::oid[])
"""
WAITING = """
SELECT pid, query_start, application_name AS app, left(query, 120) AS query
FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()
"""
TABLES_NOW = """
SELECT array_agg(oid) FROM pg_class
WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')
"""


class LockWatch:
    """Samples pg_locks / pg_stat_activity: per step, the longest ACCESS EXCLUSIVE
    hold on a table that existed before it, and the longest lock wait. A hold or
    wait is a run of consecutive samples that saw it (a session that locks the same
    table twice, in two transactions, makes two holds)."""

    def __init__(self, database: str) -> None:
        self.database = database
        # key -> [first seen, last seen] of the current run of samples; longest so far.
        self.open: dict[Any, list[float]] = {}
        self.longest: dict[str, tuple[float, str]] = {}
        self.tables: list[int] = []
        self.running = True

    def _sample(self, kind: str, seen: dict[Any, str], now: float) -> None:
        for key, label in seen.items():
            span = self.open.setdefault((kind, key), [now, now])
            span[1] = now
            if span[1] - span[0] > self.longest.get(kind, (0.0, ""))[0]:
                self.longest[kind] = (span[1] - span[0], label)
        for key in [k for k in self.open if k[0] == kind and k[1] not in seen]:
            del self.open[key]  # not seen this time: that hold or wait ended

    async def watch(self) -> None:
        connection = await asyncpg.connect(url_for(self.database))
        try:
            while self.running:
                now = time.monotonic()
                held = {
                    (row["pid"], row["relation"]): row["relation"]
                    for row in await connection.fetch(HELD, self.tables)
                }
                waiting = {
                    (row["pid"], row["query_start"]): f"{row['app']}: {row['query']}"
                    for row in await connection.fetch(WAITING)
                }
                self._sample("hold", held, now)
                self._sample("wait", waiting, now)
                await asyncio.sleep(SAMPLE_SECONDS)
        finally:
            await connection.close()

    async def begin(self) -> None:
        connection = await asyncpg.connect(url_for(self.database))
        try:
            self.tables = list(await connection.fetchval(TABLES_NOW) or [])
        finally:
            await connection.close()
        self.open.clear()
        self.longest.clear()

    def result(self) -> dict[str, Any]:
        hold = self.longest.get("hold")
        wait = self.longest.get("wait")
        return {
            "longest_exclusive_seconds": round(hold[0], 3) if hold else 0.0,
            "longest_exclusive_on": hold[1] if hold else None,
            "longest_lock_wait_seconds": round(wait[0], 3) if wait else 0.0,
            "longest_lock_wait_by": wait[1] if wait else None,
        }


# --- migrating -------------------------------------------------------------------


async def step(
    database: str, direction: str, migration: str, load: Load, locks: LockWatch
) -> dict[str, Any]:
    """One migration, one direction, through the real CLI, with the load going on."""
    args = (
        ["forwards", APP, f"--migration_id={migration}"]
        if direction != "backwards"
        else ["backwards", APP, f"--migration_id={migration}", "--auto_agree"]
    )
    await locks.begin()
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "piccolo.main", "migrations", *args,
        cwd=REPO_ROOT, env={**os.environ, "DATABASE_URL": url_for(database)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    ended = time.monotonic()
    text = output.decode(errors="replace")
    result: dict[str, Any] = {
        "phase": direction,
        "migration": migration,
        "command": f"piccolo migrations {' '.join(args)}",
        "seconds": round(ended - started, 2),
        "ok": process.returncode == 0,
        "steps": {m[1]: float(m[2]) for m in STEP_LINE.finditer(text)},
        **locks.result(),
        "load": load.window(started, ended),
    }
    # The migration's own "(exclusive)" steps: exact, where sampling may miss a short one.
    printed = {name: value for name, value in result["steps"].items() if "(exclusive)" in name}
    if printed and max(printed.values()) > result["longest_exclusive_seconds"]:
        name = max(printed, key=printed.__getitem__)
        result["longest_exclusive_seconds"] = printed[name]
        result["longest_exclusive_on"] = name.replace(" (exclusive)", "")
    if process.returncode != 0:
        result["output"] = text[-3000:]
    print(format_row(result), flush=True)
    return result


# --- rows ------------------------------------------------------------------------

COLUMNS = """
SELECT attname FROM pg_attribute
WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attnum
"""


async def fingerprints(
    database: str, cutoff: datetime.datetime | None
) -> dict[str, dict[str, Any]]:
    """Per key table: rows (created before `cutoff`), and per column its non-NULL
    count and a checksum of its values (order-independent)."""
    connection = await asyncpg.connect(url_for(database))
    found: dict[str, dict[str, Any]] = {}
    try:
        await connection.execute("SET statement_timeout = 0; SET TimeZone = 'UTC'")
        for table in KEY_TABLES:
            columns = [row["attname"] for row in await connection.fetch(COLUMNS, table)]
            if not columns:
                continue
            parts = ["count(*)::text AS rows"]
            for index, column in enumerate(columns):
                quoted = '"' + column.replace('"', '""') + '"'
                parts.append(f"count({quoted})::text AS n{index}")
                parts.append(
                    f"coalesce(sum(hashtextextended({quoted}::text, 0)), 0)::text AS h{index}"
                )
            where = " WHERE created_at < $1" if cutoff and "created_at" in columns else ""
            query = f"SELECT {', '.join(parts)} FROM {table}{where}"
            row = await connection.fetchrow(query, *([cutoff] if where else []))
            assert row is not None
            found[table] = {
                "rows": int(row["rows"]),
                "columns": {
                    column: (int(row[f"n{index}"]), row[f"h{index}"])
                    for index, column in enumerate(columns)
                },
            }
    finally:
        await connection.close()
    return found


def compare_rows(base: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """Base rows lost, or changed in a column they had values in (a column that was
    NULL in every base row may be filled: that is a backfill). updated_at
    restamped is reported apart (a backfill that fires the trigger)."""
    lost: dict[str, int] = {}
    changed: dict[str, list[str]] = {}
    restamped: list[str] = []
    for table, before in base.items():
        after = now.get(table)
        if after is None:
            lost[table] = before["rows"]
            continue
        if after["rows"] != before["rows"]:
            lost[table] = before["rows"] - after["rows"]
        for column, (count, digest) in before["columns"].items():
            if count == 0 or column not in after["columns"]:
                continue
            if tuple(after["columns"][column]) != (count, digest):
                if column == "updated_at":
                    restamped.append(table)
                else:
                    changed.setdefault(table, []).append(column)
    return {
        "kept": not lost and not changed,
        "lost": lost,
        "changed_columns": changed,
        "updated_at_restamped": restamped,
    }


async def writers_rows(database: str, load: Load) -> dict[str, Any]:
    """Every run, step log and completion the writers were answered for is there."""
    runs, completed, step_logs = list(load.runs), list(load.completed), load.step_logs
    connection = await asyncpg.connect(url_for(database))
    try:
        found_runs = await connection.fetchval(
            "SELECT count(*) FROM workflow_runs WHERE id = ANY($1::uuid[])", runs
        )
        found_completed = await connection.fetchval(
            "SELECT count(*) FROM workflow_runs WHERE id = ANY($1::uuid[]) "
            "AND status = 'completed'",
            completed,
        )
        found_logs = await connection.fetchval(
            "SELECT count(*) FROM run_step_logs WHERE run_id = ANY($1::uuid[])", runs
        )
    finally:
        await connection.close()
    return {
        "runs": len(runs),
        "runs_found": found_runs,
        "completed": len(completed),
        "completed_found": found_completed,
        "step_logs_at_least": step_logs,
        "step_logs_found": found_logs,
        "kept": found_runs == len(runs)
        and found_completed == len(completed)
        and found_logs >= step_logs,
    }


# --- the report ------------------------------------------------------------------

HEADER = (
    f"{'phase':<15} {'migration':<27} {'ok':>3} {'seconds':>8} {'excl. s':>8} {'on':<22} "
    f"{'wait s':>7} {'requests':>8} {'errors':>6} {'max ms':>8} {'p99 ms':>7}"
)


def format_row(row: dict[str, Any]) -> str:
    load = row["load"]
    on = (row.get("longest_exclusive_on") or "-")[:22]
    return (
        f"{row['phase']:<15} {row['migration']:<27} {'yes' if row['ok'] else 'NO':>3} "
        f"{row['seconds']:>8.2f} {row['longest_exclusive_seconds']:>8.3f} {on:<22} "
        f"{row['longest_lock_wait_seconds']:>7.3f} {load['requests']:>8} {load['errors']:>6} "
        f"{load['max_ms']:>8.1f} {load['p99_ms'] if load['p99_ms'] is not None else '-':>7}"
    )


def format_report(report: dict[str, Any]) -> str:
    lines = [HEADER, "-" * len(HEADER)]
    baseline = report["baseline"]
    lines.append(
        f"{'(load only)':<15} {'':<27} {'':>3} {report['settle_seconds']:>8.2f} {'':>8} {'':<22} "
        f"{'':>7} {baseline['requests']:>8} {baseline['errors']:>6} {baseline['max_ms']:>8.1f} "
        f"{baseline['p99_ms'] if baseline['p99_ms'] is not None else '-':>7}"
    )
    lines += [format_row(row) for row in report["steps"]]
    total = report["load"]
    lines.append(
        f"whole run: {total['requests']} requests, {total['errors']} errors, longest "
        f"{total['max_ms']:.0f} ms, p99 {total['p99_ms']} ms"
    )
    for label, check in report["rows"].items():
        lines.append(
            f"rows after {label}: base kept {check['base']['kept']} "
            f"(lost {check['base']['lost'] or 'none'}, changed {check['base']['changed_columns'] or 'none'}"
            f"{', updated_at restamped in ' + ', '.join(check['base']['updated_at_restamped']) if check['base']['updated_at_restamped'] else ''}); "
            f"writers' rows kept {check['writers']['kept']} ({check['writers']['runs']} runs, "
            f"{check['writers']['step_logs_found']} step logs)"
        )
    for error in report["first_errors"]:
        lines.append(f"error: {error}")
    verdict = report["verdict"]
    lines.append(
        f"verdict: {'PASS' if verdict['pass'] else 'FAIL'} (longest request "
        f"{verdict['longest_request_ms']:.0f} ms, target <= {verdict['max_stall_ms']:.0f} ms; "
        f"errors {verdict['errors']}, target 0; every migration ran {verdict['migrations_ok']}; "
        f"rows kept {verdict['rows_kept']})"
    )
    return "\n".join(lines)


async def sample_data(database: str) -> tuple[uuid.UUID, list[str], list[str]]:
    """The admin user, some recent runs and their workflows (with steps 0 and 1)."""
    connection = await asyncpg.connect(url_for(database))
    try:
        admin = await connection.fetchval(
            "SELECT id FROM users WHERE role = 'admin' ORDER BY created_at LIMIT 1"
        )
        rows = await connection.fetch(
            "SELECT r.id, r.workflow_id FROM workflow_runs r "
            "JOIN workflows w ON w.id = r.workflow_id AND w.is_active "
            "ORDER BY r.created_at DESC LIMIT 200"
        )
    finally:
        await connection.close()
    if admin is None or not rows:
        raise SystemExit(f"{database}: no admin user or no runs to load the API with")
    runs = [str(row["id"]) for row in rows]
    workflows = sorted({str(row["workflow_id"]) for row in rows})
    return admin, runs, workflows


async def measure(args: argparse.Namespace, span: Range, base: str) -> dict[str, Any]:
    database = f"{PREFIX}_run"
    await dataset.clone(base, database)
    print("fingerprinting the base ...", flush=True)
    base_prints = await fingerprints(base, None)
    tree = app_tree(args.app_ref)
    admin, runs, workflows = await sample_data(database)
    connection = await asyncpg.connect(url_for(database))
    try:
        cutoff = await connection.fetchval("SELECT now()")
    finally:
        await connection.close()
    key = await make_key(database, admin)  # after the cutoff: not a base row
    headers = {"Authorization": f"Bearer {key}"}
    load = Load()
    locks = LockWatch(database)
    steps: list[dict[str, Any]] = []
    rows: dict[str, Any] = {}
    report: dict[str, Any] = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(),
        "sizes": asdict(sizes_for(args.runs)),
        "range": {"migrations": list(span.under_test), "before": span.before,
                  "load_at": span.load_at},
        "app": {"ref": args.app_ref or "checkout", "writers": args.writers,
                "readers": args.readers},
        "base_rows": {table: value["rows"] for table, value in base_prints.items()},
        "settle_seconds": args.settle,
        "sample_seconds": SAMPLE_SECONDS,
    }  # fmt: skip
    async with serve(tree, database) as url:
        clients = [
            *(asyncio.ensure_future(writer(load, url, headers, workflows))
              for _ in range(args.writers)),
            *(asyncio.ensure_future(reader(load, url, headers, runs, workflows))
              for _ in range(args.readers)),
        ]  # fmt: skip
        watcher = asyncio.ensure_future(locks.watch())
        try:
            started = time.monotonic()
            await asyncio.sleep(args.settle)
            report["baseline"] = load.window(started, time.monotonic())
            print(HEADER, flush=True)
            phases = [("forwards", list(span.under_test))]
            if not args.no_backwards:
                phases += [
                    ("backwards", list(reversed(span.under_test))),
                    ("forwards again", list(span.under_test)),
                ]
            for phase, migrations in phases:
                for migration in migrations:
                    steps.append(await step(database, phase, migration, load, locks))
                    if not steps[-1]["ok"]:
                        break
                if not steps[-1]["ok"]:
                    break
                rows[phase] = {
                    "base": compare_rows(base_prints, await fingerprints(database, cutoff)),
                    "writers": await writers_rows(database, load),
                }
        finally:
            load.stop.set()
            locks.running = False
            await asyncio.gather(*clients, watcher, return_exceptions=True)
    if tree != REPO_ROOT:
        shutil.rmtree(tree, ignore_errors=True)
    total = summarize(load.samples)
    report.update(steps=steps, rows=rows, load=total, first_errors=load.errors[:FIRST_ERRORS])
    longest = max((s.seconds for s in load.samples), default=0.0)
    report["verdict"] = {
        "longest_request_ms": round(longest * 1000, 1),
        "max_stall_ms": args.max_stall * 1000,
        "errors": total["errors"],
        "migrations_ok": bool(steps) and all(s["ok"] for s in steps),
        "rows_kept": bool(rows)
        and all(c["base"]["kept"] and c["writers"]["kept"] for c in rows.values()),
    }
    verdict = report["verdict"]
    verdict["pass"] = (
        longest <= args.max_stall
        and total["errors"] == 0
        and verdict["migrations_ok"]
        and verdict["rows_kept"]
    )
    return report


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
        help="serve the app from this git revision (default: --since's revision, else "
        "this checkout's files)",
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
    if args.since and not args.app_ref:
        args.app_ref = args.since  # the release before the new migrations serves meanwhile
    report = await measure(args, span, base)
    RESULTS.mkdir(exist_ok=True)
    out = args.out or RESULTS / f"migrations-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(format_report(report))
    print(f"wrote {out}")
    return 0 if report["verdict"]["pass"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
