"""Session set-up: one test database built by the real migrations.

1. A template database is migrated with the real CLI
   (`piccolo migrations forwards all`), exactly as a deployment would be.
2. The test database is cloned from it, and DATABASE_URL points at it for the
   rest of the session (the engine reads settings lazily, nothing is patched).
3. Each test that uses the database starts from empty tables (TRUNCATE before,
   not clean-up after, so a crashed test cannot poison the next one). Tests
   may commit freely.

Migration tests build their own scratch databases (tests/test_migrations.py).

With ``FLOWFORGE_TEST_PGBOUNCER=1`` the app's DATABASE_URL goes through a
real PgBouncer in transaction mode (tests/pgbouncer.py) with
``DATABASE_POOLER=transaction``; set-up and the relay's LISTEN stay direct.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from tests import support

SESSION_STARTED = time.time()
THROUGH_PGBOUNCER = os.environ.get("FLOWFORGE_TEST_PGBOUNCER") == "1"


@dataclass
class Bouncer:
    """A PgBouncer in transaction mode in front of the test database."""

    port: int
    direct_url: str  # the test database, directly
    url: str  # the same database through PgBouncer


_session_bouncer: list[Bouncer] = []


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    template = support.database_name("template")
    template_url = await support.create_database(template)
    support.piccolo("migrations", "forwards", "all", database_url=template_url)
    name = support.database_name("main")
    url = await support.create_database(name, template=template)

    from flowforge.core.settings import get_settings
    from flowforge.db.engine import DB
    from tests.pgbouncer import pgbouncer, via

    async with contextlib.AsyncExitStack() as stack:
        app_url = url
        if THROUGH_PGBOUNCER:
            port = await stack.enter_async_context(pgbouncer(support.server_url()))
            app_url = via(port, url)
            _session_bouncer.append(Bouncer(port, url, app_url))
            os.environ["DATABASE_POOLER"] = "transaction"
            os.environ["RELAY_LISTEN_DATABASE_URL"] = url
        os.environ["DATABASE_URL"] = app_url
        os.environ["FLOWFORGE_ENV"] = "test"
        get_settings.cache_clear()
        DB.reconfigure()
        yield app_url
        if DB.pool is not None:
            await DB.close_connection_pool()


@pytest.fixture(scope="session")
async def bouncer(database_url: str) -> AsyncIterator[Bouncer]:
    """The session's PgBouncer (FLOWFORGE_TEST_PGBOUNCER=1), else one of this fixture's own."""
    if _session_bouncer:
        yield _session_bouncer[0]
        return
    from tests.pgbouncer import pgbouncer, via

    async with pgbouncer(support.server_url()) as port:
        yield Bouncer(port, database_url, via(port, database_url))


@pytest.fixture
async def db(database_url: str) -> None:
    """Empty app tables and a running pool on the migrated test database."""
    from flowforge.db.engine import DB

    if DB.pool is None:
        await DB.start_connection_pool()
    await DB.fetch(f"TRUNCATE {', '.join(support.APP_TABLES)} CASCADE")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fuzzing figures when this session ran the fuzz test."""
    import json

    artifacts = support.REPO_ROOT / "tests" / "artifacts"
    report_path = artifacts / "fuzz-report.json"
    if report_path.exists() and report_path.stat().st_mtime >= SESSION_STARTED:
        report = json.loads(report_path.read_text())
        terminalreporter.write_sep("-", "OpenAPI fuzzing (schemathesis)")
        terminalreporter.write_line(
            f"{report['requests']} requests to {report['operations']} operations in "
            f"{report['seconds']} s, {report['server_errors']} server errors (5xx); "
            f"statuses: {report['statuses']}"
        )
    report_path = artifacts / "schemathesis-report.json"
    if report_path.exists() and report_path.stat().st_mtime >= SESSION_STARTED:
        report = json.loads(report_path.read_text())
        terminalreporter.write_sep("-", "schemathesis run: every check, every phase")
        terminalreporter.write_line(
            f"{report['requests']} requests in {report['seconds']} s, "
            f"{report['findings']} findings, {report['server_errors']} server errors; "
            f"phases: {', '.join(report['phases'])}; statuses: {report['statuses']}"
        )


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A stream-key prefix of this test's own on the real Redis, cleaned before and after."""
    import uuid

    from tests import relay_support

    client = await relay_support.redis_client()
    prefix = f"fftest:{uuid.uuid4().hex[:12]}"
    try:
        await relay_support.delete_keys(client, prefix)
        yield prefix
        await relay_support.delete_keys(client, prefix)
    finally:
        await client.aclose()
