"""`make serve` stops cleanly on SIGTERM and Ctrl-C (a real make, a real server).

uvicorn shuts down gracefully on either signal, then raises it again so that by
default the process dies of it; make then reported ``make: *** [...] Terminated``
(``Error 143`` through a shell) for a stop that went as intended.
``python -m flowforge.commands.serve`` (what the target execs) exits 0 instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.live import free_port
from tests.support import REPO_ROOT


@contextmanager
def make_serve(database_url: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`make serve` on a free port, in a process group of its own, once it listens."""
    port = free_port()
    venv = Path(sys.executable).parent.parent  # the tests' own virtualenv
    process = subprocess.Popen(
        [
            "make",
            "--no-print-directory",
            # Serve from this virtualenv as it is: never reinstall it mid-test.
            f"--old-file={venv}/.installed-runtime",
            "serve",
            f"VENV={venv}",
            "HOST=127.0.0.1",
            f"PORT={port}",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "DATABASE_URL": database_url, "FLOWFORGE_ENV": "test"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "make serve did not listen in 60 s"
                time.sleep(0.1)
        yield process, port
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()


def server_of(make: subprocess.Popen[str]) -> int:
    """The server: make's only child (the recipe execs it, no shell in between)."""
    children = Path(f"/proc/{make.pid}/task/{make.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def stopped(make: subprocess.Popen[str]) -> tuple[int, str]:
    _, stderr = make.communicate(timeout=60)
    # A graceful stop: the lifespan's shutdown ran, nothing was killed mid-way.
    assert "Application shutdown complete." in stderr, stderr
    assert "Finished server process" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert "make: ***" not in stderr, stderr  # make saw its recipe succeed
    with pytest.raises(ProcessLookupError):  # nothing of the group is left running
        os.killpg(make.pid, 0)
    return make.returncode, stderr


def test_sigterm_to_the_server_stops_make_serve_with_exit_0(database_url: str) -> None:
    with make_serve(database_url) as (make, _):
        os.kill(server_of(make), signal.SIGTERM)  # what a process manager does
        returncode, _ = stopped(make)
    assert returncode == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_group_stops_the_server_gracefully(
    database_url: str, signum: signal.Signals
) -> None:
    """Ctrl-C (SIGINT) or `kill -TERM -<pgid>`: the server stops cleanly and make says
    nothing; make's own status is the signal it received, re-raised after its
    recipe ended (GNU make always does so), as for any command stopped by it."""
    with make_serve(database_url) as (make, _):
        os.killpg(make.pid, signum)
        returncode, _ = stopped(make)
    assert returncode == -signum
