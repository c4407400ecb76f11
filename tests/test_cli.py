"""The command line as scripts and the docs use it: `flowforge ...` and `piccolo ...`.

Real processes of the installed entry points (`.venv/bin/flowforge`,
`.venv/bin/piccolo`), never an in-process call.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flowforge.db.readiness import expected_migrations
from tests import support

BIN = Path(sys.executable).parent
COLOUR = re.compile(r"\x1b\[")


def run(
    program: str, *args: str, cwd: Path, database_url: str, **env: str
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "PICCOLO_CONF"}
    return subprocess.run(
        [str(BIN / program), *args],
        cwd=cwd,
        env={**clean, "DATABASE_URL": database_url, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    async with support.scratch_database("cli_empty") as url:
        yield url


async def test_flowforge_migrates_from_a_directory_without_piccolo_conf(
    empty_database: str, tmp_path: Path
) -> None:
    # No piccolo_conf.py here and no PICCOLO_CONF: `piccolo flowforge migrate`
    # would print "Unrecognised command" and exit 0.
    result = run("flowforge", "migrate", cwd=tmp_path, database_url=empty_database)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(await support.applied_migrations(empty_database)) == expected_migrations()
    again = run("flowforge", "migrate", cwd=tmp_path, database_url=empty_database)
    assert again.returncode == 0
    count = support.flowforge_migration_count()
    assert f"{count} of {count} migrations already complete" in again.stdout


@pytest.mark.parametrize(
    ("program", "arguments", "message"),
    [
        ("flowforge", ["migrat"], "flowforge: unknown command 'migrat'"),
        ("flowforge", [], "usage: flowforge <command>"),
        ("piccolo", ["flowforge", "migrat"], "piccolo flowforge: unknown command 'migrat'"),
        ("piccolo", ["flowforge"], "piccolo flowforge: a command is required"),
    ],
)
def test_a_missing_or_unknown_command_exits_2_with_one_line(
    program: str, arguments: list[str], message: str, tmp_path: Path
) -> None:
    # `piccolo` from the checkout (its piccolo_conf.py), `flowforge` from anywhere.
    cwd = support.REPO_ROOT if program == "piccolo" else tmp_path
    result = run(program, *arguments, cwd=cwd, database_url="postgresql://db.invalid/x")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert "Unrecognised command" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 or (program == "flowforge" and not arguments), result.stderr


def test_help_lists_the_commands_and_exits_0(tmp_path: Path) -> None:
    result = run("flowforge", "--help", cwd=tmp_path, database_url="postgresql://db.invalid/x")
    assert result.returncode == 0, result.stderr
    from flowforge.commands import COMMANDS

    for function, _aliases in COMMANDS:
        assert f"  {function.__name__} " in result.stdout
    one = run(
        "flowforge", "migrate", "--help", cwd=tmp_path, database_url="postgresql://db.invalid/x"
    )
    assert one.returncode == 0, one.stderr
    assert "Apply all pending migrations of every app" in one.stdout


def test_bad_options_name_the_flowforge_command(tmp_path: Path) -> None:
    result = run(
        "flowforge", "create_api_key", "--scopes", "reed", cwd=tmp_path,
        database_url="postgresql://db.invalid/x",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("flowforge create_api_key: --scopes must be"), result.stderr


async def test_piccolo_flowforge_migrate_prints_true_counts_and_no_stale_warning(
    empty_database: str,
) -> None:
    result = run(
        "piccolo", "flowforge", "migrate", cwd=support.REPO_ROOT, database_url=empty_database
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Piccolo printed the number of files as "already complete" (N and N on
    # an empty database) and warned that the migrations it was about to run
    # had not been run.
    assert (
        f"0 of {support.flowforge_migration_count()} migrations already complete" in result.stdout
    )
    assert "0 of 3 migrations already complete" in result.stdout
    assert not re.search(r"^\S* ?\d+ migrations? already complete", result.stdout, re.M)
    assert "haven't been run" not in result.stderr
    assert not COLOUR.search(result.stderr), result.stderr


async def test_piccolos_pending_migrations_warning_has_no_colour_codes_off_a_terminal(
    empty_database: str,
) -> None:
    result = run(
        "piccolo", "flowforge", "outbox_status", cwd=support.REPO_ROOT,
        database_url=empty_database,
    )  # fmt: skip
    pending = len(expected_migrations())  # every app's, none applied yet
    assert f"=> {pending} migrations haven't been run" in result.stderr
    assert not COLOUR.search(result.stderr), result.stderr
    assert result.returncode != 0  # no tables: the command cannot run


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({"PORT": "9123"}, "http://127.0.0.1:9123/api/v1/me"),
        ({"HOST": "0.0.0.0", "PORT": "9124"}, "http://127.0.0.1:9124/api/v1/me"),
        # The image's variables (uvicorn reads them).
        ({"UVICORN_HOST": "0.0.0.0", "UVICORN_PORT": "8765"}, "http://127.0.0.1:8765/api/v1/me"),
    ],
)
async def test_created_keys_name_the_port_the_server_uses(
    db: None, database_url: str, env: dict[str, str], url: str
) -> None:
    clean = {name: "" for name in ("HOST", "PORT", "UVICORN_HOST", "UVICORN_PORT")}
    made = run(
        "flowforge", "create_user", "--email", "port@example.com", "--role", "viewer",
        "--issue_key", cwd=support.REPO_ROOT, database_url=database_url, **{**clean, **env},
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    assert url in made.stdout
    issued = run(
        "flowforge", "create_api_key", "--email", "port@example.com", "--scopes", "read",
        cwd=support.REPO_ROOT, database_url=database_url, **{**clean, **env},
    )  # fmt: skip
    assert issued.returncode == 0, issued.stdout + issued.stderr
    assert url in issued.stdout


async def test_hints_name_the_program_in_use(db: None, database_url: str, tmp_path: Path) -> None:
    made = run(
        "flowforge", "create_user", "--email", "hint@example.com", "--role", "viewer",
        cwd=tmp_path, database_url=database_url,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    assert "its API key: flowforge create_api_key --email hint@example.com" in made.stdout
