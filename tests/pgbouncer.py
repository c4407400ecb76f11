"""A real PgBouncer (Debian's package) in transaction mode, in front of the test server.

`make test` installs the package (see the Makefile); this module starts a
private ``pgbouncer`` process on a free port of 127.0.0.1 with a generated
ini and userlist in a temporary directory, pointing at whatever server the
tests use: 127.0.0.1:5432 (DATABASE_URL set) or the embedded server's unix
socket. Every database name is forwarded (``* = ...``), so the test
databases need no entries of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg

from tests.live import free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def _target(server_url: str) -> tuple[str, int, str]:
    """(host or socket directory, port, user) of a PostgreSQL URL."""
    parts = urlsplit(server_url)
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    host = socket_dir or parts.hostname or "127.0.0.1"
    return host, parts.port or 5432, parts.username or "postgres"


def _run_as(host: str) -> str | None:
    """PgBouncer refuses to run as root: drop to a user that can reach the server.

    A unix socket inside the embedded server's data directory is reachable
    only by that directory's owner; TCP works for the `postgres` user.
    """
    if os.geteuid() != 0:
        return None
    if host.startswith("/"):
        return pwd.getpwuid(Path(host).stat().st_uid).pw_name
    return "postgres"


def write_config(directory: Path, server_url: str, port: int, pool_size: int = 20) -> Path:
    host, server_port, user = _target(server_url)
    run_as = _run_as(host)
    (directory / "userlist.txt").write_text(f'"{user}" ""\n')
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        "\n".join(
            [
                "[databases]",
                f"* = host={host} port={server_port} user={user}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {directory / 'userlist.txt'}",
                "pool_mode = transaction",
                "max_client_conn = 2000",
                f"default_pool_size = {pool_size}",
                # Retry a failed server login after 1 s, not 15: a restarted
                # server (a replica) is used again promptly.
                "server_login_retry = 1",
                f"max_db_connections = {pool_size}",
                f"logfile = {directory / 'pgbouncer.log'}",
                f"pidfile = {directory / 'pgbouncer.pid'}",
                f"admin_users = {user}",
                *([f"user = {run_as}"] if run_as else []),
                "",
            ]
        )
    )
    if run_as:
        account = pwd.getpwnam(run_as)
        for path in (directory, *directory.iterdir()):
            os.chown(path, account.pw_uid, account.pw_gid)
    return ini


def via(bouncer_port: int, url: str) -> str:
    """`url`'s database and user, reached through the PgBouncer on `bouncer_port`."""
    parts = urlsplit(url)
    user = parts.username or "postgres"
    return urlunsplit(("postgresql", f"{user}@127.0.0.1:{bouncer_port}", parts.path, "", ""))


async def _wait_until_accepting(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited ({process.returncode}):\n{_tail(log)}")
        try:
            connection = await asyncpg.connect(url, statement_cache_size=0, timeout=2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not accept connections:\n{_tail(log)}") from None
            await asyncio.sleep(0.05)
            continue
        await connection.close()
        return


def _tail(log: Path) -> str:
    return log.read_text()[-2000:] if log.exists() else "(no log)"


def _start(directory: Path, server_url: str, pool_size: int) -> tuple[subprocess.Popen[bytes], int]:
    if not Path(PGBOUNCER).exists():
        raise RuntimeError("pgbouncer is not installed: `make test` installs it (apt pgbouncer)")
    os.chmod(directory, 0o755)  # pgbouncer's own user reads its ini there
    port = free_port()
    ini = write_config(directory, server_url, port, pool_size)
    process = subprocess.Popen(
        [PGBOUNCER, str(ini)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return process, port


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class RunningBouncer:
    port: int
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """SIGKILL: every client connection drops at once, nothing is flushed."""
        self.process.kill()
        self.process.wait()


@contextlib.asynccontextmanager
async def running_pgbouncer(server_url: str, pool_size: int = 20) -> AsyncIterator[RunningBouncer]:
    """Run PgBouncer (transaction mode) in front of `server_url`'s server."""
    with tempfile.TemporaryDirectory(prefix="ff-pgbouncer-") as tmp:
        directory = Path(tmp)
        process, port = _start(directory, server_url, pool_size)
        try:
            await _wait_until_accepting(via(port, server_url), process, directory / "pgbouncer.log")
            yield RunningBouncer(port, process)
        finally:
            if process.poll() is None:
                _stop(process)


@contextlib.asynccontextmanager
async def pgbouncer(server_url: str, pool_size: int = 20) -> AsyncIterator[int]:
    """Run PgBouncer (transaction mode) in front of `server_url`'s server; yields its port."""
    async with running_pgbouncer(server_url, pool_size) as bouncer:
        yield bouncer.port
