"""From `make run` to a first API call: the seed's bootstrap key, the CLI commands, the admin login."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from flowforge.db.engine import DB
from tests import support

KEY = re.compile(r"ff_[0-9a-f]{16}_[A-Za-z0-9_-]{43}")


def piccolo(*args: str, database_url: str, **env: str) -> str:
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        return support.piccolo(*args, database_url=database_url).stdout
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
async def no_admin_logins(db: None) -> None:
    await DB.fetch("DELETE FROM piccolo_user")


async def test_seed_prints_a_working_admin_key_once(
    client: httpx.AsyncClient, database_url: str, no_admin_logins: None
) -> None:
    first = piccolo("flowforge", "seed", database_url=database_url)
    [key] = set(KEY.findall(first))
    response = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert response.json()["user"]["email"] == "admin@flowforge.local"
    assert response.json()["scopes"] == ["admin", "read", "write"]
    assert "admin login for /admin/ created: username admin, password" in first

    second = piccolo("flowforge", "seed", database_url=database_url)
    assert KEY.findall(second) == []
    assert "bootstrap API key for admin@flowforge.local exists" in second
    assert "admin login for /admin/ exists" in second
    keys = await DB.fetch("SELECT count(*) AS n FROM api_keys WHERE name = 'bootstrap'")
    assert keys[0]["n"] == 1
    # The curl session of the README, with the seeded key.
    headers = {"Authorization": f"Bearer {key}"}
    made = await client.post(
        "/api/v1/workflows",
        json={"name": "Hello", "steps": [{"name": "Say hi", "action_type": "log"}]},
        headers=headers,
    )
    assert made.status_code == 201
    run = await client.post(
        f"/api/v1/workflows/{made.json()['id']}/runs", json={"inputs": {}}, headers=headers
    )
    assert run.status_code == 201
    listed = await client.get(f"/api/v1/workflows/{made.json()['id']}/runs", headers=headers)
    assert [r["id"] for r in listed.json()["items"]] == [run.json()["id"]]


async def test_create_api_key_command(client: httpx.AsyncClient, database_url: str) -> None:
    piccolo("flowforge", "seed", database_url=database_url)
    out = piccolo(
        "flowforge",
        "create_api_key",
        "--email=developer@flowforge.local",
        "--name=laptop",
        "--scopes=read",
        "--expires_in_days=7",
        database_url=database_url,
    )
    [key] = set(KEY.findall(out))
    me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"})
    assert (me.status_code, me.json()["scopes"]) == (200, ["read"])
    row = (await DB.fetch("SELECT expires_at FROM api_keys WHERE name = 'laptop'"))[0]
    assert row["expires_at"] is not None
    result = support.piccolo(
        "flowforge",
        "create_api_key",
        "--email=nobody@example.com",
        database_url=database_url,
        check=False,
    )
    assert result.returncode != 0
    assert "No user with email" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--scopes=reed"], "--scopes must be a comma-separated subset of: read, write, admin"),
        (["--scopes", "reed"], "--scopes must be a comma-separated subset of: read, write, admin"),
        (["--expires_in_days=abc"], "argument --expires_in_days: expected a whole number"),
        (["--expires_in_days", "abc"], "argument --expires_in_days: expected a whole number"),
        (["--expires_in_days=99999999"], "--expires_in_days must be a whole number"),
        (["--expires_in_days"], "argument --expires_in_days: expected one argument"),
        (["--scopes=admin"], "Cannot issue the key: A developer's key cannot have the scope(s)"),
        (["--name= "], "Cannot issue the key: API key name must not be blank."),
        (["--colour", "red"], "unrecognized arguments: --colour red"),
        (["stray"], "unrecognized arguments: stray"),
    ],
)
async def test_create_api_key_command_rejects_bad_input_with_one_line_and_exit_2(
    database_url: str, arguments: list[str], message: str
) -> None:
    piccolo("flowforge", "seed", database_url=database_url)
    before = (await DB.fetch("SELECT count(*) AS n FROM api_keys"))[0]["n"]
    result = readme_cli(
        "flowforge", "create_api_key", "--email", "developer@flowforge.local", *arguments,
        database_url=database_url,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == f"piccolo flowforge create_api_key: {message}" or (
        message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    ), result.stderr
    assert "Usage" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert (await DB.fetch("SELECT count(*) AS n FROM api_keys"))[0]["n"] == before


def readme_cli(*args: str, database_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI exactly as the docs write it: `.venv/bin/piccolo ...` from the repository."""
    executable = Path(sys.executable).parent / "piccolo"
    assert executable.exists(), executable
    return subprocess.run(
        [str(executable), *args],
        cwd=support.REPO_ROOT,
        env={**os.environ, "DATABASE_URL": database_url, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


async def test_create_user_makes_a_first_user_and_its_key_on_an_empty_database(
    client: httpx.AsyncClient, database_url: str
) -> None:
    result = readme_cli(
        "flowforge", "create_user", "--email", "Ops@Example.com", "--role", "admin",
        "--issue_key", database_url=database_url,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "user Ops@Example.com created (role admin" in result.stdout
    [key] = set(KEY.findall(result.stdout))
    me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"})
    assert me.status_code == 200
    assert (me.json()["user"]["display_name"], me.json()["user"]["role"]) == ("Ops", "admin")
    assert me.json()["scopes"] == ["admin", "read", "write"]
    events = await DB.fetch("SELECT event_type FROM outbox ORDER BY seq")
    assert [row["event_type"] for row in events] == ["user.created", "api_key.created"]
    # Without --issue_key: the user only, and how to get a key.
    viewer = readme_cli(
        "flowforge", "create_user", "--email=viewer@example.com", "--role=viewer",
        "--display_name", "Vera Viewer", database_url=database_url,
    )  # fmt: skip
    assert viewer.returncode == 0, viewer.stdout + viewer.stderr
    assert KEY.findall(viewer.stdout) == []
    assert "piccolo flowforge create_api_key --email viewer@example.com" in viewer.stdout
    row = await DB.fetch("SELECT display_name, role FROM users WHERE email = 'viewer@example.com'")
    assert (row[0]["display_name"], row[0]["role"]) == ("Vera Viewer", "viewer")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--role", "admin"], "--email is required"),
        (["--email", "a@example.com"], "--role must be one of: admin, developer, viewer"),
        (["--email", "a@example.com", "--role", "root"], "--role must be one of"),
        (["--email", "not-an-email", "--role", "admin"], "Cannot create the user: "),
        (["--email", "taken@example.com", "--role", "admin", "--issue_key"],
         "Cannot create the user: "),
        (["--email", "a@example.com", "--role", "admin", "--display_name", " "],
         "Cannot create the user: "),
    ],
)  # fmt: skip
async def test_create_user_rejects_bad_input_with_one_line_and_exit_2(
    db: None, database_url: str, arguments: list[str], message: str
) -> None:
    taken = readme_cli(
        "flowforge", "create_user", "--email=taken@example.com", "--role=developer",
        database_url=database_url,
    )  # fmt: skip
    assert taken.returncode == 0, taken.stderr
    before = await DB.fetch("SELECT (SELECT count(*) FROM users) AS users, "
                            "(SELECT count(*) FROM api_keys) AS keys, "
                            "(SELECT count(*) FROM outbox) AS events")  # fmt: skip
    result = readme_cli("flowforge", "create_user", *arguments, database_url=database_url)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    after = await DB.fetch("SELECT (SELECT count(*) FROM users) AS users, "
                           "(SELECT count(*) FROM api_keys) AS keys, "
                           "(SELECT count(*) FROM outbox) AS events")  # fmt: skip
    assert after == before


DOCS_COMMAND = re.compile(r"^\.venv/bin/piccolo (flowforge create_api_key .*)$", re.MULTILINE)


async def test_create_api_key_as_the_docs_write_it(
    client: httpx.AsyncClient, database_url: str
) -> None:
    piccolo("flowforge", "seed", database_url=database_url)
    getting_started = support.REPO_ROOT / "docs" / "getting-started.md"
    [docs_command] = DOCS_COMMAND.findall(getting_started.read_text())
    assert docs_command == (
        "flowforge create_api_key --email admin@flowforge.local --scopes read,write,admin"
    )
    result = readme_cli(*docs_command.split(), database_url=database_url)
    assert result.returncode == 0, result.stdout + result.stderr
    [key] = set(KEY.findall(result.stdout))
    me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"})
    assert me.status_code == 200
    assert me.json()["user"]["email"] == "admin@flowforge.local"
    assert me.json()["scopes"] == ["admin", "read", "write"]
    # Both spellings of every option, mixed.
    mixed = readme_cli(
        "flowforge", "create_api_key", "--email=admin@flowforge.local", "--name", "mixed",
        "--scopes", "read", "--expires_in_days=3", database_url=database_url,
    )  # fmt: skip
    assert mixed.returncode == 0, mixed.stdout + mixed.stderr
    row = (await DB.fetch("SELECT scopes, expires_at FROM api_keys WHERE name = 'mixed'"))[0]
    assert list(row["scopes"]) == ["read"]
    assert row["expires_at"] is not None


async def test_the_seed_prints_the_host_and_port_the_server_uses(
    database_url: str, no_admin_logins: None
) -> None:
    out = readme_cli(
        "flowforge", "seed", database_url=database_url, HOST="0.0.0.0", PORT="8123"
    ).stdout
    assert "http://127.0.0.1:8123/api/v1/me" in out
    await DB.fetch("DELETE FROM api_keys")
    out = readme_cli(
        "flowforge", "seed", database_url=database_url, HOST="127.0.0.2", PORT="9000"
    ).stdout
    assert "http://127.0.0.2:9000/api/v1/me" in out
    makefile = (support.REPO_ROOT / "Makefile").read_text()
    assert "HOST=$(HOST) PORT=$(PORT) $(BIN)/flowforge seed" in makefile


COMMANDS = [
    "migrate",
    "seed",
    "create_user",
    "create_api_key",
    "create_admin_login",
    "relay",
    "outbox_status",
    "outbox_requeue",
    "prune",
    "reap",
    "partitions",
    "backfill_versions",
]


def test_every_command_has_a_help_that_says_what_it_does(database_url: str) -> None:
    from flowforge.piccolo_app import APP_CONFIG

    registered = sorted(command.callable.__name__ for command in APP_CONFIG.commands)
    assert registered == sorted(COMMANDS)
    for command in APP_CONFIG.commands:
        name = command.callable.__name__
        result = readme_cli("flowforge", name, "--help", database_url=database_url)
        assert result.returncode == 0, (name, result.stderr)
        summary = (command.callable.__doc__ or "").strip().splitlines()[0]
        assert len(summary) > 20, name
        assert summary in result.stdout, (name, result.stdout)
        assert "return" not in re.sub(r"\x1b\[[0-9;]*m", "", result.stdout).split("Args")[-1]


async def test_admin_login_from_settings(database_url: str, no_admin_logins: None) -> None:
    from piccolo.apps.user.tables import BaseUser

    password = "a-real-password-for-tests"
    out = piccolo(
        "flowforge",
        "create_admin_login",
        database_url=database_url,
        FLOWFORGE_ADMIN_USERNAME="ops",
        FLOWFORGE_ADMIN_PASSWORD=password,
    )
    assert "username ops, FLOWFORGE_ADMIN_PASSWORD" in out
    assert password not in out
    assert await BaseUser.login("ops", password) is not None
    changed = "another-real-password"
    out = piccolo(
        "flowforge",
        "create_admin_login",
        database_url=database_url,
        FLOWFORGE_ADMIN_USERNAME="ops",
        FLOWFORGE_ADMIN_PASSWORD=changed,
    )
    assert "password set from FLOWFORGE_ADMIN_PASSWORD" in out
    assert await BaseUser.login("ops", changed) is not None
    stored = await DB.fetch("SELECT password, admin, superuser FROM piccolo_user")
    assert changed not in stored[0]["password"]
    assert stored[0]["admin"] and stored[0]["superuser"]


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("change-me", "is a placeholder"),
        ("Summer2026!!", "is too easy to guess (zxcvbn strength 3/4, 4 needed: "),
    ],
)
def test_weak_admin_password_stops_the_cli(database_url: str, password: str, problem: str) -> None:
    env = {**os.environ, "FLOWFORGE_ENV": "test", "FLOWFORGE_ADMIN_PASSWORD": password}
    result = subprocess.run(
        [sys.executable, "-m", "piccolo.main", "flowforge", "create_admin_login"],
        cwd=support.REPO_ROOT,
        env={**env, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert f"FLOWFORGE_ADMIN_PASSWORD {problem}" in result.stderr
    assert password not in result.stderr
