"""The embedded PostgreSQL: starts from nothing, persists, is shared, and stops."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowforge.db import embedded
from tests.support import REPO_ROOT


def run_python(code: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={**os.environ, "FLOWFORGE_DATA_DIR": str(data_dir), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


USE_SERVER = """
import asyncio
import asyncpg
from pathlib import Path
from flowforge.db import embedded
url = embedded.database_url(Path({data_dir!r}))
async def main():
    connection = await asyncpg.connect(url)
    {body}
    await connection.close()
asyncio.run(main())
print(url)
"""


@pytest.fixture
def data_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="ffemb", dir="/tmp"))
    yield directory
    embedded.stop(directory)


def running(data_dir: Path) -> bool:
    result = subprocess.run(
        [sys.executable, "-m", "flowforge.db.embedded", "status"],
        cwd=REPO_ROOT,
        env={**os.environ, "FLOWFORGE_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.startswith("running")


def test_starts_from_nothing_persists_data_and_stops_with_its_last_holder(
    data_dir: Path,
) -> None:
    body = "await connection.execute('CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)')"
    first = run_python(USE_SERVER.format(data_dir=str(data_dir), body=body), data_dir)
    assert first.returncode == 0, first.stderr
    pgdata = data_dir / "pgdata"
    assert f"host={pgdata}" in first.stdout  # socket inside the data directory
    assert "/flowforge?" in first.stdout  # its own database, created on first use
    assert not running(data_dir)  # the only holder exited: the server stopped

    body = "print(await connection.fetchval('SELECT x FROM kept'))"
    second = run_python(USE_SERVER.format(data_dir=str(data_dir), body=body), data_dir)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[0] == "42"


def test_a_killed_holder_does_not_keep_the_server_running_forever(data_dir: Path) -> None:
    killed = run_python(
        USE_SERVER.format(
            data_dir=str(data_dir), body="import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
        ),
        data_dir,
    )
    assert killed.returncode == -9
    assert running(data_dir)  # nobody left to stop it...
    # ...and `make db-status` says so, naming the dead holder.
    status = subprocess.run(
        [sys.executable, "-m", "flowforge.db.embedded", "status"],
        cwd=REPO_ROOT,
        env={**os.environ, "FLOWFORGE_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "but no process uses it" in status
    assert f"exited without releasing it: pid {killed_pid(data_dir)}" in status
    assert "make db-stop" in status

    joined = run_python(USE_SERVER.format(data_dir=str(data_dir), body="pass"), data_dir)
    assert joined.returncode == 0, joined.stderr
    assert not running(data_dir)  # ...until the next holder forgot the dead one and exited


def killed_pid(data_dir: Path) -> int:
    import json

    (pid,) = json.loads((data_dir / "pgdata" / ".handle_pids.json").read_text())
    assert isinstance(pid, int)
    return pid


def test_stop_command(data_dir: Path) -> None:
    run_python(
        USE_SERVER.format(
            data_dir=str(data_dir), body="import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
        ),
        data_dir,
    )
    assert running(data_dir)
    result = subprocess.run(
        [sys.executable, "-m", "flowforge.db.embedded", "stop"],
        cwd=REPO_ROOT,
        env={**os.environ, "FLOWFORGE_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "stopped"
    assert not running(data_dir)
    assert embedded.main(["bogus"]) == 2


def test_a_data_dir_too_long_for_a_socket_is_refused(tmp_path: Path) -> None:
    too_long = tmp_path / ("x" * 120)
    with pytest.raises(embedded.EmbeddedDatabaseError, match="FLOWFORGE_DATA_DIR"):
        embedded.start(too_long)


def test_cli_reports_an_impossible_embedded_database_without_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["FLOWFORGE_DATA_DIR"] = str(tmp_path / ("x" * 120))
    result = subprocess.run(
        [sys.executable, "-m", "piccolo.main", "migrations", "check"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "FlowForge cannot start: the data directory path is too long" in result.stderr
    assert "Traceback" not in result.stderr
