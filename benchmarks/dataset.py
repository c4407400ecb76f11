"""The benchmark data set: realistic volume, loaded with COPY, reused between runs.

Default: 1,000 users, 10,000 workflows (3 steps each), 1,000,000 runs spread
over 90 days with a realistic status mix, ~2 step logs per started run, and
~2 outbox events per run of which all but the last few hundred are published.
The database is built by the real migrations (the `piccolo` CLI), exactly like
a deployment, then loaded with COPY. A marker row records the sizes so the next
run with the same sizes reuses the data instead of loading it again.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

REPO_ROOT = Path(__file__).resolve().parent.parent
# BENCH_DATABASE: another name (the tests run every operation on a tiny data set).
DATABASE = os.environ.get("BENCH_DATABASE", "flowforge_bench")
CHUNK = 50_000
BUSY_WORKFLOWS = 50
NOW = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)
STATUS_MIX = [("completed", 90), ("failed", 5), ("cancelled", 2), ("running", 2), ("pending", 1)]
# The data set's own version, beside its sizes and the schema: a data set cached
# by an older loader is reloaded (2: the sample runs have their run history).
DATASET_VERSION = 2


@dataclass(frozen=True)
class Sizes:
    users: int = 1_000
    workflows: int = 10_000
    runs: int = 1_000_000
    steps_per_workflow: int = 3
    unpublished_events: int = 500

    @classmethod
    def quick(cls) -> Sizes:
        return cls(users=100, workflows=1_000, runs=100_000)


def server_url() -> str:
    """The maintenance database of the server the benchmarks use."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return urlunsplit(urlsplit(url)._replace(path="/postgres"))
    sys.path.insert(0, str(REPO_ROOT))
    from flowforge.core.settings import Settings
    from flowforge.db import embedded

    return embedded.database_url(Settings().data_dir, "postgres")


def database_url(name: str | None = None) -> str:
    """The data set's database (or database `name`) on the benchmarks' server."""
    return urlunsplit(urlsplit(server_url())._replace(path=f"/{name or DATABASE}"))


async def clone(base: str, name: str) -> None:
    """`name`, (re)made as a copy of database `base` (CREATE DATABASE ... TEMPLATE)."""
    admin = await asyncpg.connect(server_url())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{base}" STRATEGY FILE_COPY')
    finally:
        await admin.close()


def app_database_url() -> str:
    """Where FlowForge (and the floor) connect: the data set, or a pooler in front of it."""
    return os.environ.get("BENCH_APP_DATABASE_URL") or database_url()


def uid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


@dataclass
class Loaded:
    """What the operations need to know about the data set."""

    sizes: Sizes
    user_ids: list[uuid.UUID]
    workflow_ids: list[uuid.UUID]
    workflow_owner: dict[uuid.UUID, uuid.UUID]
    busy_workflow_ids: list[uuid.UUID]  # workflows with many runs, for list/get
    sample_run_ids: list[uuid.UUID]  # runs with step logs
    rows_loaded: int = 0
    load_seconds: float = 0.0


def _runs(sizes: Sizes, workflow_ids: list[uuid.UUID], rng: random.Random) -> Iterator[tuple]:
    statuses = [status for status, weight in STATUS_MIX for _ in range(weight)]
    span = 90 * 24 * 3600
    busy = workflow_ids[:BUSY_WORKFLOWS]
    for index in range(sizes.runs):
        # A fifth of all runs belong to a few busy workflows (thousands of runs
        # each); the rest are spread evenly (~80 runs per workflow by default).
        if rng.random() < 0.2:
            workflow_id = busy[rng.randrange(len(busy))]
        else:
            workflow_id = workflow_ids[index % len(workflow_ids)]
        created = NOW - datetime.timedelta(seconds=span * (1 - index / sizes.runs))
        status = statuses[rng.randrange(len(statuses))]
        started = created + datetime.timedelta(seconds=1) if status != "pending" else None
        if status == "cancelled":
            started = None
        finished = (
            created + datetime.timedelta(seconds=30)
            if status in ("completed", "failed", "cancelled")
            else None
        )
        yield (
            uid(rng),
            workflow_id,
            status,
            "manual",
            json.dumps({"n": index}),
            '{"ok":true}' if status == "completed" else None,
            "step failed" if status == "failed" else None,
            started,
            finished,
            created,
            created,
        )


RUN_COLUMNS = [
    "id", "workflow_id", "status", "trigger_type", "inputs", "outputs", "error",
    "started_at", "finished_at", "created_at", "updated_at",
]  # fmt: skip
LOG_COLUMNS = [
    "run_id", "step_position", "step_name", "attempt", "status", "input", "output",
    "started_at", "finished_at", "created_at", "updated_at",
]  # fmt: skip
OUTBOX_COLUMNS = [
    "aggregate_type", "aggregate_id", "event_type", "payload", "published_at",
    "created_at", "updated_at",
]  # fmt: skip


async def _copy(
    connection: asyncpg.Connection, table: str, columns: list[str], rows: Iterator[tuple]
) -> int:
    total = 0
    chunk: list[tuple] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= CHUNK:
            await connection.copy_records_to_table(table, records=chunk, columns=columns)
            total += len(chunk)
            chunk = []
    if chunk:
        await connection.copy_records_to_table(table, records=chunk, columns=columns)
        total += len(chunk)
    return total


async def load(connection: asyncpg.Connection, sizes: Sizes) -> Loaded:
    """Load the whole data set with COPY; returns handles for the operations."""
    rng = random.Random(20261125)
    started = time.perf_counter()
    # The generated rows are consistent by construction: skip per-row FK and
    # trigger work during the load (what pg_restore does). Needs a superuser;
    # without one the load is merely slower.
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await connection.execute("SET session_replication_role = replica")
    user_ids = [uid(rng) for _ in range(sizes.users)]
    rows = 0
    rows += await _copy(
        connection, "users", ["id", "email", "display_name", "role"],
        ((u, f"user{i}@bench.example", f"User {i}", "admin" if i == 0 else "developer")
         for i, u in enumerate(user_ids)),
    )  # fmt: skip
    workflow_ids = [uid(rng) for _ in range(sizes.workflows)]
    owner = {w: user_ids[i % len(user_ids)] for i, w in enumerate(workflow_ids)}
    rows += await _copy(
        connection, "workflows", ["id", "owner_id", "name", "trigger_type", "trigger_config"],
        ((w, owner[w], f"Workflow {i}", "manual", "{}") for i, w in enumerate(workflow_ids)),
    )  # fmt: skip
    # Version 1 of each workflow (issue 17): the workflows_first_version trigger
    # writes it, but session_replication_role = replica skips triggers here.
    if await connection.fetchval("SELECT to_regclass('workflow_versions') IS NOT NULL"):
        rows += int(
            (
                await connection.execute(
                    "INSERT INTO workflow_versions (workflow_id, version, trigger_type, "
                    "trigger_config, created_by_user_id, created_at) "
                    "SELECT id, 1, trigger_type, trigger_config, owner_id, created_at FROM workflows"
                )
            ).rsplit(" ", 1)[-1]
        )
    rows += await _copy(
        connection, "workflow_steps", ["workflow_id", "position", "name", "action_type", "config"],
        ((w, p, f"step {p}", "http.request", '{"url":"https://example.com"}')
         for w in workflow_ids for p in range(sizes.steps_per_workflow)),
    )  # fmt: skip

    sample_runs: list[uuid.UUID] = []
    # Step logs carry their run's created_at (the partition key) from the
    # partitioning migration on; a data set built before it has no such column.
    log_columns = LOG_COLUMNS
    if await connection.fetchval(
        "SELECT 1 FROM information_schema.columns "
        "WHERE table_name = 'run_step_logs' AND column_name = 'run_created_at'"
    ):
        log_columns = [*LOG_COLUMNS, "run_created_at"]
    log_rows: list[tuple] = []
    event_rows: list[tuple] = []
    run_chunk: list[tuple] = []
    unpublished_from = sizes.runs - sizes.unpublished_events // 2

    async def flush() -> int:
        copied = 0
        if run_chunk:
            await connection.copy_records_to_table(
                "workflow_runs", records=run_chunk, columns=RUN_COLUMNS
            )
            copied += len(run_chunk)
        if log_rows:
            await connection.copy_records_to_table(
                "run_step_logs", records=log_rows, columns=log_columns
            )
            copied += len(log_rows)
        if event_rows:
            await connection.copy_records_to_table(
                "outbox", records=event_rows, columns=OUTBOX_COLUMNS
            )
            copied += len(event_rows)
        run_chunk.clear()
        log_rows.clear()
        event_rows.clear()
        return copied

    for index, run in enumerate(_runs(sizes, workflow_ids, rng)):
        run_id, status, started_at, finished_at, created = run[0], run[2], run[7], run[8], run[9]
        run_chunk.append(run)
        if started_at is not None:
            for position in range(2):
                log_status = (
                    "running"
                    if status == "running" and position == 1
                    else ("failed" if status == "failed" and position == 1 else "completed")
                )
                log_finished = None if log_status == "running" else finished_at or started_at
                log_rows.append((
                    run_id, position, f"step {position}", 1, log_status, "{}",
                    '{"ok":true}' if log_status == "completed" else None,
                    started_at, log_finished, started_at, started_at,
                    created,
                )[: len(log_columns)])  # fmt: skip
            if len(sample_runs) < 1000 and index % 97 == 0:
                sample_runs.append(run_id)
        published = created + datetime.timedelta(seconds=2) if index < unpublished_from else None
        event_rows.append(
            (
                "workflow_run",
                run_id,
                "run.created",
                '{"status":"pending"}',
                published,
                created,
                created,
            )
        )
        if finished_at is not None:
            event_rows.append(
                ("workflow_run", run_id, f"run.{status}", json.dumps({"status": status}), published, finished_at, finished_at)
            )  # fmt: skip
        if len(run_chunk) >= CHUNK:
            rows += await flush()
    rows += await flush()
    rows += await _history(connection, sample_runs)
    await connection.execute("ANALYZE")
    return Loaded(
        sizes=sizes,
        user_ids=user_ids,
        workflow_ids=workflow_ids,
        workflow_owner=owner,
        busy_workflow_ids=workflow_ids[:BUSY_WORKFLOWS],
        sample_run_ids=sample_runs,
        rows_loaded=rows,
        load_seconds=time.perf_counter() - started,
    )


# The history the triggers would have written for the sample runs (they are off
# during the load, so run_history is otherwise empty): each run's creation, start
# and end, and each step attempt's creation and end, at the rows' own times, by
# an API key's actor. ~7 entries per run, a realistic page of
# GET /api/v1/runs/{id}/history; only the sample (the runs the reads use), so the
# load stays a COPY of the rest.
HISTORY_OF_SAMPLE = """
INSERT INTO run_history (run_id, run_created_at, step_log_id, step_position, attempt,
                         from_status, to_status, reason, actor, recorded_at)
SELECT r.id, r.created_at, NULL, NULL, NULL, e.from_status, e.to_status, e.reason,
       'api_key:bench', e.at
FROM workflow_runs r CROSS JOIN LATERAL (VALUES
    (NULL, 'pending', NULL, r.created_at),
    ('pending', 'running', NULL, r.started_at),
    (CASE WHEN r.started_at IS NULL THEN 'pending' ELSE 'running' END, r.status,
     CASE WHEN r.status IN ('failed', 'cancelled') THEN r.error END, r.finished_at)
) AS e(from_status, to_status, reason, at)
WHERE r.id = ANY($1::uuid[]) AND e.at IS NOT NULL
UNION ALL
SELECT l.run_id, l.run_created_at, l.id, l.step_position, l.attempt, e.from_status,
       e.to_status, l.error, 'api_key:bench', e.at
FROM run_step_logs l CROSS JOIN LATERAL (VALUES
    (NULL, 'running', l.started_at),
    ('running', l.status, CASE WHEN l.status <> 'running' THEN l.finished_at END)
) AS e(from_status, to_status, at)
WHERE l.run_id = ANY($1::uuid[]) AND e.at IS NOT NULL
"""


async def _history(connection: asyncpg.Connection, run_ids: list[uuid.UUID]) -> int:
    """The sample runs' history (HISTORY_OF_SAMPLE), where the schema has it."""
    if not run_ids or not await connection.fetchval(
        "SELECT to_regclass('run_history') IS NOT NULL AND EXISTS ("
        "SELECT 1 FROM information_schema.columns "
        "WHERE table_name = 'run_history' AND column_name = 'run_created_at')"
    ):
        return 0
    return int((await connection.execute(HISTORY_OF_SAMPLE, run_ids)).rsplit(" ", 1)[-1])


def schema_version() -> list[str]:
    """The migration files: a data set built before a new migration is rebuilt."""
    return sorted(path.name for path in (REPO_ROOT / "piccolo_migrations").glob("*.py"))


def migrate(url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "piccolo.main", "migrations", "forwards", "all"],
        cwd=REPO_ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        raise SystemExit(f"migrations failed:\n{result.stdout}\n{result.stderr}")


async def prepare(sizes: Sizes, *, fresh: bool) -> Loaded:
    """A migrated, loaded benchmark database with these sizes (reused when it matches)."""
    admin = await asyncpg.connect(server_url())
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
        marker = None
        if exists and not fresh:
            connection = await asyncpg.connect(database_url())
            try:
                marker = await connection.fetchval(
                    "SELECT obj_description('public.workflow_runs'::regclass, 'pg_class')"
                )
            except asyncpg.PostgresError:
                marker = None
            finally:
                await connection.close()
        if marker:
            meta = json.loads(marker)
            if (
                meta.get("sizes") == asdict(sizes)
                and meta.get("schema") == schema_version()
                and meta.get("version") == DATASET_VERSION
            ):
                return await _reuse(sizes, meta)
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    migrate(database_url())
    connection = await asyncpg.connect(database_url())
    try:
        loaded = await load(connection, sizes)
        meta = {
            "version": DATASET_VERSION,
            "sizes": asdict(sizes),
            "schema": schema_version(),
            "busy_workflow_ids": [str(w) for w in loaded.busy_workflow_ids],
            "sample_run_ids": [str(r) for r in loaded.sample_run_ids],
            "rows_loaded": loaded.rows_loaded,
            "load_seconds": loaded.load_seconds,
        }
        await connection.execute(f"COMMENT ON TABLE workflow_runs IS '{json.dumps(meta)}'")
    finally:
        await connection.close()
    return loaded


async def _reuse(sizes: Sizes, meta: dict) -> Loaded:
    connection = await asyncpg.connect(database_url())
    try:
        # The data set's own users (cold:create_user adds others).
        users = [
            r["id"]
            for r in await connection.fetch(
                "SELECT id FROM users WHERE email LIKE 'user%@bench.example' ORDER BY email"
            )
        ]
        workflows = await connection.fetch("SELECT id, owner_id FROM workflows")
    finally:
        await connection.close()
    return Loaded(
        sizes=sizes,
        user_ids=users,
        workflow_ids=[r["id"] for r in workflows],
        workflow_owner={r["id"]: r["owner_id"] for r in workflows},
        busy_workflow_ids=[uuid.UUID(w) for w in meta["busy_workflow_ids"]],
        sample_run_ids=[uuid.UUID(r) for r in meta["sample_run_ids"]],
        rows_loaded=meta["rows_loaded"],
        load_seconds=meta["load_seconds"],
    )
