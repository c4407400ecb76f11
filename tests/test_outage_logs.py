"""A lost database is one structured warning per retry, never a traceback (issue 9, defect 9).

The API (real uvicorn) and the relay (the real command) run as processes
against the test database through a TCP proxy, with ``LOG_FORMAT=json``. The
database is away at start-up (the engine's background pool start retries),
comes back, then goes away again under a running pool (asyncpg's pool retries
its connection floor, and used to log a 25-line traceback each time; the
relay's batch loop retries too). Every line each process wrote must be one
JSON object, and each retry exactly one warning line with an ``error`` field.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.live import free_port
from tests.support import REPO_ROOT, json_log_lines
from tests.tcp_proxy import TcpProxy
from tests.test_engine_faults import through_proxy, upstream_of

pytestmark = pytest.mark.usefixtures("db")


@contextlib.asynccontextmanager
async def process(args: list[str], log: Path, env: dict[str, str]) -> AsyncIterator[None]:
    with log.open("w") as output:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdout=output,
            stderr=output,
        )
        try:
            yield
        finally:
            if child.returncode is None:
                child.terminate()
                try:
                    await asyncio.wait_for(child.wait(), 20)
                except TimeoutError:
                    child.kill()
                    await child.wait()


def events(log: Path, name: str) -> list[dict[str, Any]]:
    return [line for line in json_log_lines(log.read_text()) if line["event"] == name]


async def until(predicate: Callable[[], bool | Awaitable[bool]], within: float, what: str) -> None:
    try:
        async with asyncio.timeout(within):
            while True:
                result = predicate()
                if isinstance(result, Awaitable):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        pytest.fail(f"{what} did not happen within {within:g}s")


FLOOR_RETRY = "Failed to restore the pool connection floor; retrying"


async def test_each_retry_of_a_lost_database_is_one_structured_warning(
    database_url: str, tmp_path: Path
) -> None:
    proxy = TcpProxy(upstream_of(database_url))
    await proxy.start()
    await proxy.stop()  # the port is chosen; the database is away at start-up
    env = {
        "DATABASE_URL": through_proxy(database_url, proxy.port),
        "FLOWFORGE_ENV": "test",
        "LOG_FORMAT": "json",
        "DB_POOL_MIN_SIZE": "2",
        "DB_POOL_MAX_SIZE": "4",
        "DB_CONNECT_TIMEOUT": "2",
        "RELAY_POLL_MIN_INTERVAL": "0.2",
        "RELAY_POLL_MAX_INTERVAL": "1",
        "RELAY_REAP_INTERVAL": "0",
        "RELAY_PRUNE_INTERVAL": "0",
    }
    port = free_port()
    api_log, relay_log = tmp_path / "api.log", tmp_path / "relay.log"
    api = ["-m", "uvicorn", "flowforge.main:app", "--host", "127.0.0.1", "--port", str(port)]
    relay = ["-m", "piccolo.main", "flowforge", "relay"]

    async def ready() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=3) as client:
                return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
        return False

    try:
        async with process(api, api_log, env), process(relay, relay_log, env):
            # 1. Down at start-up: the engine's background start retries.
            await until(
                lambda: len(events(api_log, "db.still_unreachable")) >= 2,
                30,
                "two background pool-start retries",
            )
            await until(
                lambda: len(events(relay_log, "relay.database_error")) >= 2,
                30,
                "two relay retries",
            )
            await proxy.start()
            await until(ready, 30, "the API becoming ready")

            # 2. Lost under a running pool: asyncpg retries its connection floor.
            await proxy.stop()
            await until(
                lambda: len([e for e in events(api_log, FLOOR_RETRY)]) >= 2,
                30,
                "two retries of the pool's connection floor",
            )
            await proxy.start()
            await until(ready, 30, "the API recovering")
    finally:
        await proxy.stop()

    for log in (api_log, relay_log):
        text = log.read_text()
        assert "Traceback" not in text, text
        lines = json_log_lines(text)  # fails on any line that is not one JSON object
        assert not [line for line in lines if "exception" in line], text
    retries = events(api_log, "db.still_unreachable") + events(api_log, FLOOR_RETRY)
    retries += events(relay_log, "relay.database_error")
    assert len(retries) >= 6
    for retry in retries:
        assert retry["level"] == "warning"
        assert retry["error"].split(":")[0].endswith(("Error", "Refused", "Reset")), retry
    # The floor retries come from asyncpg itself: same shape as ours.
    assert {line["logger"] for line in events(api_log, FLOOR_RETRY)} == {"asyncpg.pool"}
