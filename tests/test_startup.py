"""Start-up under real uvicorn: what can heal waits (503 with the reason), what cannot exits 2.

And the embedded PostgreSQL stops with the last process using it, whichever
signal stopped that process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests import support
from tests.live import free_port


@contextlib.contextmanager
def uvicorn(env: dict[str, str], log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The app under real uvicorn (not waiting for anything); stopped on the way out."""
    port = free_port()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "flowforge.main:app", "--port", str(port)],
            cwd=support.REPO_ROOT,
            env={**os.environ, "DB_POOL_MIN_SIZE": "1", "DB_POOL_MAX_SIZE": "3", **env},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for(
    condition: Callable[[], bool], what: str, process: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + 45
    while True:
        if process.poll() is not None:
            raise AssertionError(f"uvicorn exited ({process.returncode}):\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if condition():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()}")
        time.sleep(0.2)


def readyz(base_url: str) -> httpx.Response:
    return httpx.get(f"{base_url}/readyz", timeout=5)


def test_a_missing_database_is_a_503_with_the_reason_until_it_is_created(
    tmp_path: Path,
) -> None:
    name = support.database_name("created_late")
    url = support.with_database(support.server_url(), name)
    log = tmp_path / "uvicorn.log"
    asyncio.run(support.drop_database(name))
    try:
        with uvicorn({"DATABASE_URL": url, "FLOWFORGE_ENV": "test"}, log) as (app, base_url):
            wait_for(
                lambda: httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200,
                "/healthz",
                app,
                log,
            )
            response = readyz(base_url)
            assert response.status_code == 503
            assert response.json() == {"postgres": f'error: database "{name}" does not exist'}

            # Create it and migrate it (as the compose migrate service would):
            # the same process becomes ready, no restart.
            asyncio.run(support.create_database(name))
            support.piccolo("flowforge", "migrate", database_url=url)
            wait_for(lambda: readyz(base_url).status_code == 200, "/readyz 200", app, log)
            assert readyz(base_url).json()["postgres"] == "ok"
            assert app.poll() is None
    finally:
        asyncio.run(support.drop_database(name))


@pytest.mark.parametrize(
    "database_url",
    ["postgresql://db:notaport/flowforge", "postgresql://db:70000/flowforge"],
)
def test_a_database_url_that_cannot_work_exits_2_with_one_line(
    tmp_path: Path, database_url: str
) -> None:
    log = tmp_path / "uvicorn.log"
    with uvicorn({"DATABASE_URL": database_url}, log) as (app, _):
        assert app.wait(timeout=60) == 2
    output = log.read_text()
    assert "DATABASE_URL: has an invalid port" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("sent", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_embedded_server_stops_with_the_app_whichever_signal_stops_it(
    tmp_path: Path, sent: signal.Signals
) -> None:
    # Short, under /tmp: the server's unix socket lives in the data directory.
    data_dir = Path(tempfile.mkdtemp(prefix="ffsig", dir="/tmp"))
    env = {"FLOWFORGE_DATA_DIR": str(data_dir), "FLOWFORGE_ENV": "test", "DATABASE_URL": ""}
    log = tmp_path / "uvicorn.log"
    try:
        with uvicorn(env, log) as (app, base_url):
            wait_for(
                lambda: httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200,
                "/healthz",
                app,
                log,
            )
            assert db_status(data_dir).startswith("running")
            assert f"used by pid {app.pid}" in db_status(data_dir)
            app.send_signal(sent)
            app.wait(timeout=30)
        # Before: uvicorn re-raised SIGTERM with the default action after its
        # graceful shutdown, the exit hook that releases the server never ran,
        # and PostgreSQL kept running with the dead pid in its handle list.
        assert db_status(data_dir).startswith("not running"), log.read_text()
        assert str(app.pid) not in (data_dir / "pgdata" / ".handle_pids.json").read_text()
    finally:
        subprocess.run(
            [sys.executable, "-m", "flowforge.db.embedded", "stop"],
            cwd=support.REPO_ROOT,
            env={**os.environ, "FLOWFORGE_DATA_DIR": str(data_dir)},
            capture_output=True,
            timeout=60,
            check=False,
        )


def db_status(data_dir: Path) -> str:
    """What `make db-status` prints."""
    result = subprocess.run(
        [sys.executable, "-m", "flowforge.db.embedded", "status"],
        cwd=support.REPO_ROOT,
        env={**os.environ, "FLOWFORGE_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()
