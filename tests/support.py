"""Test databases: a server (DATABASE_URL's, or the embedded one), and databases on it.

The suite never touches the database DATABASE_URL names: it creates its own
databases on the same server, named after this checkout so that two
checkouts (or pytest-xdist workers) never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

REPO_ROOT = Path(__file__).resolve().parent.parent
# Captured before conftest points DATABASE_URL at the test database.
USER_DATABASE_URL = os.environ.get("DATABASE_URL") or None


def with_database(url: str, database: str) -> str:
    """`url` with its database name replaced (works for host and socket URLs)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def server_url() -> str:
    """A URL on the server the tests use, for its maintenance database."""
    if USER_DATABASE_URL:
        return with_database(USER_DATABASE_URL, "postgres")
    from flowforge.core.settings import Settings
    from flowforge.db import embedded

    return embedded.database_url(Settings().data_dir, "postgres")


def database_name(purpose: str) -> str:
    checkout = hashlib.sha1(str(REPO_ROOT).encode()).hexdigest()[:8]
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"ff_test_{checkout}_{worker}_{purpose}"


async def create_database(name: str, template: str | None = None) -> str:
    """(Re)create database `name`, empty or cloned from `template`; returns its URL."""
    admin_url = server_url()
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        clause = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
        await connection.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await connection.close()
    return with_database(admin_url, name)


async def drop_database(name: str) -> None:
    connection = await asyncpg.connect(server_url())
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def piccolo(*args: str, database_url: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real `piccolo` CLI against `database_url`, from the repository root."""
    env = {**os.environ, "DATABASE_URL": database_url}
    result = subprocess.run(
        [sys.executable, "-m", "piccolo.main", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"piccolo {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


@contextlib.asynccontextmanager
async def scratch_database(purpose: str) -> AsyncIterator[str]:
    """An empty database of this checkout's, dropped afterwards; yields its URL."""
    name = database_name(purpose)
    url = await create_database(name)
    try:
        yield url
    finally:
        await drop_database(name)


async def applied_migrations(url: str) -> Counter[tuple[str, str]]:
    """(app, migration id) -> how many times Piccolo recorded it, in the database at `url`."""
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT app_name, name FROM migration")
    finally:
        await connection.close()
    return Counter((row["app_name"], row["name"]) for row in rows)


def flowforge_migration_count() -> int:
    """How many migrations FlowForge's app has (the files in piccolo_migrations/)."""
    return sum(
        1 for path in (REPO_ROOT / "piccolo_migrations").glob("*.py") if path.stem != "__init__"
    )


APP_TABLES = [
    "users",
    "api_keys",
    "concurrency_limits",
    "workflows",
    "workflow_versions",
    "workflow_steps",
    "workflow_runs",
    "run_step_logs",
    "run_history",
    "outbox",
]


@contextlib.asynccontextmanager
async def global_engine_on(url: str, **env: str) -> AsyncIterator[None]:
    """Point the process's engine (flowforge.db.engine.DB) at `url` (and set `env`), then restore."""
    from flowforge.core.settings import get_settings
    from flowforge.db.engine import DB

    changed = {"DATABASE_URL": url, **env}
    previous = {name: os.environ.get(name) for name in changed}
    had_pool = DB.pool is not None
    await DB.close_connection_pool()
    os.environ.update(changed)
    get_settings.cache_clear()
    DB.reconfigure()
    try:
        yield
    finally:
        await DB.close_connection_pool()
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()
        DB.reconfigure()
        if had_pool:
            await DB.start_connection_pool()


async def wait_for_lock_waiter(url: str, query_prefix: str) -> int:
    """The pid of the backend whose statement starts with `query_prefix`, once it
    waits on a lock: a test orders two transactions on the server's lock state
    (polling pg_stat_activity: the condition, not a guess of time), so it fails
    if they never overlapped. `url` may go through PgBouncer (no named statements)."""
    connection = await asyncpg.connect(url, statement_cache_size=0)
    try:
        for _ in range(3000):
            pid = await connection.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND starts_with(query, $1) AND wait_event_type = 'Lock'",
                query_prefix,
            )
            if pid:
                return int(pid)
            await asyncio.sleep(0.02)
        raise AssertionError(f"no backend waiting on a lock in {query_prefix!r}")
    finally:
        await connection.close()


async def run_unhurried(*statements: str) -> None:
    """Run set-up statements (bulk loads, VACUUM) on one connection without the
    statement timeout: a fixture's load on a busy CI machine is not a request."""
    from flowforge.db.engine import DB

    assert DB.pool is not None
    async with DB.pool.acquire() as connection:
        await connection.execute("SET statement_timeout = 0")
        for statement in statements:
            await connection.execute(statement)


def as_table(relation: str | None, index: str | None) -> tuple[str | None, str | None]:
    """A time partition (issue 11) and its index in a plan, as the partitioned
    table and the table's index (flowforge.jobs.partitions names a partition's
    indexes <partition>_<suffix> after the table's <table>_<suffix>)."""
    from flowforge.jobs.partitions import PARTITION_NAME

    if index is not None:
        found = PARTITION_INDEX.match(index)
        if found is not None:
            index = f"{found['table']}_{found['suffix']}"
    match = PARTITION_NAME.match(relation or "")
    return (relation if match is None else match["table"]), index


PARTITION_INDEX = re.compile(r"^(?P<table>[a-z_]+?)_(?:p\d{6}|p\d{8}|default)_(?P<suffix>.+)$")


def empty_partition_scan(node: dict[str, Any]) -> bool:
    """A plan node that scans a partition the statistics know to be empty: no
    page to read, so its run cost is nil (total cost = start-up cost).
    Partitions prepared ahead are empty, and a plan over a partitioned table
    lists them all unless the partition key prunes them."""
    from flowforge.jobs.partitions import PARTITION_NAME

    return (
        node.get("Node Type") == "Seq Scan"
        and PARTITION_NAME.match(node.get("Relation Name") or "") is not None
        and float(node.get("Total Cost", 1)) == float(node.get("Startup Cost", 0))
    )


async def partition_history() -> None:
    """Move rows of past days and months out of the default partitions into
    partitions of their own, as the relay's housekeeping does."""
    from flowforge.jobs import partitions

    await partitions.ensure(partitions.MaintenanceReport())


async def drop_empty_past_partitions() -> None:
    """After a test emptied the tables: drop the past partitions, so that later
    TRUNCATEs stay quick."""
    from flowforge.jobs import partitions

    await partitions.drop_expired(
        partitions.MaintenanceReport(), outbox_retention_days=1, run_retention_days=1
    )


def json_log_lines(text: str) -> list[dict[str, Any]]:
    """Every line of `text` parsed as one JSON log object (LOG_FORMAT=json).

    Fails on a line that is not JSON: a traceback or any other stray output.
    """
    import json

    return [json.loads(line) for line in text.splitlines() if line.strip()]
