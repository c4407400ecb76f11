"""`piccolo flowforge migrate`: concurrent runs apply each migration exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flowforge.db.readiness import expected_migrations
from tests import support

RUNNERS = 4


@pytest.fixture
async def fresh_database() -> AsyncIterator[str]:
    async with support.scratch_database("migrate_lock") as url:
        yield url


def start_migrate(database_url: str) -> subprocess.Popen[str]:
    """The command exactly as docs/migrations.md and the compose file spell it."""
    return subprocess.Popen(
        [sys.executable, "-m", "piccolo.main", "flowforge", "migrate"],
        cwd=support.REPO_ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_concurrent_runs_apply_every_migration_exactly_once(fresh_database: str) -> None:
    runners = [start_migrate(fresh_database) for _ in range(RUNNERS)]
    results = [(runner, *runner.communicate(timeout=300)) for runner in runners]
    for runner, stdout, stderr in results:
        assert runner.returncode == 0, stdout + stderr
        assert "Traceback" not in stderr

    expected = expected_migrations()
    applied = await support.applied_migrations(fresh_database)
    assert set(applied) == expected
    assert max(applied.values()) == 1  # recorded once each...
    outputs = "".join(stdout for _, stdout, _ in results)
    # ...and run once each: one "[forwards]... ok!" per migration across all runners.
    assert outputs.count("[forwards]...") == len(expected)
    # The others waited for the lock, then found nothing to do.
    assert outputs.count("No migrations need to be run") >= len({app for app, _ in expected}) * (
        RUNNERS - 1
    )
    assert "another migration run holds the lock; waiting for it" in outputs


def start_plain_forwards(database_url: str) -> subprocess.Popen[str]:
    """Piccolo's own command as docs/migrations.md spells it: `piccolo migrations forwards all`."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "piccolo"), "migrations", "forwards", "all"],
        cwd=support.REPO_ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_concurrent_plain_forwards_apply_every_migration_exactly_once(
    fresh_database: str,
) -> None:
    # Replicas each running Piccolo's command as a start-up step: without the
    # lock 3 of 4 failed (`pg_type_typname_nsp_index`, `already exists`).
    runners = [start_plain_forwards(fresh_database) for _ in range(RUNNERS)]
    results = [(runner, *runner.communicate(timeout=300)) for runner in runners]
    for runner, stdout, stderr in results:
        assert runner.returncode == 0, stdout + stderr
        assert "Traceback" not in stdout + stderr
        assert "failed" not in (stdout + stderr).lower(), stdout + stderr

    expected = expected_migrations()
    applied = await support.applied_migrations(fresh_database)
    assert set(applied) == expected
    assert max(applied.values()) == 1
    outputs = "".join(stdout for _, stdout, _ in results)
    assert outputs.count("[forwards]...") == len(expected)
    assert "another migration run holds the lock; waiting for it" in outputs


async def test_migrations_are_not_bound_by_the_request_statement_timeout(
    fresh_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1 ms: every migration statement would be cancelled under the request limit.
    monkeypatch.setenv("DB_STATEMENT_TIMEOUT", "0.001")
    result = support.piccolo("flowforge", "migrate", database_url=fresh_database)
    assert result.stdout.count("[forwards]...") == len(expected_migrations())


def test_a_missing_database_is_one_line_and_a_failure() -> None:
    name = support.database_name("never_created")
    url = support.with_database(support.server_url(), name)
    result = subprocess.run(
        [sys.executable, "-m", "piccolo.main", "flowforge", "migrate"],
        cwd=support.REPO_ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert f'FlowForge cannot migrate: database "{name}" does not exist' in result.stderr
    assert "Traceback" not in result.stderr
