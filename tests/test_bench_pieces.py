"""benchmarks/pieces.py: every piece of the request path is measured, and each
toggle it times really changes what the app does (no timing assertions)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from benchmarks import pieces
from tests.support import REPO_ROOT, database_name, drop_database, server_url


async def call(app: Any, **scope: Any) -> tuple[int, dict[bytes, bytes]]:
    """One request through an ASGI app, as the benchmark drives it: (status, headers)."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(pieces._scope() | scope, pieces._receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    return start["status"], dict(start.get("headers", []))


async def access_lines(app: Any, calls: int, caplog: pytest.LogCaptureFixture) -> int:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="flowforge.access"):
        for _ in range(calls):
            await call(app)
    return sum(record.name == "flowforge.access" for record in caplog.records)


async def test_the_access_line_toggles_write_every_some_or_no_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    apps = pieces.middleware_apps()
    every, off = apps["access line, every request (JSON)"]
    sampled, sampled_off = apps["access line, ACCESS_LOG_SAMPLE=0.1"]
    assert await access_lines(every, 50, caplog) == 50
    assert await access_lines(off, 50, caplog) == 0
    assert await access_lines(sampled_off, 50, caplog) == 0
    # 1,000 requests at 10%: 100 lines expected (sd 9.5); 30 and 250 are > 7 sd away.
    assert 30 <= await access_lines(sampled, 1000, caplog) <= 250


async def test_the_request_id_and_metrics_piece_adds_both_and_its_baseline_neither() -> None:
    observed, bare = pieces.middleware_apps()["request id + metrics"]
    labels = {"method": "GET", "route": "<unmatched>", "status": "200"}

    def requests_counted() -> float:
        return REGISTRY.get_sample_value("flowforge_http_requests_total", labels) or 0.0

    before = requests_counted()
    status, headers = await call(observed)
    assert status == 200 and b"x-request-id" in headers
    assert requests_counted() == before + 1
    status, headers = await call(bare)
    assert status == 200 and b"x-request-id" not in headers
    assert requests_counted() == before + 1


async def test_the_body_limit_piece_refuses_what_its_baseline_lets_through() -> None:
    from flowforge.api.limits import MAX_BODY_BYTES

    limited, bare = pieces.middleware_apps()["body size limit"]
    scope = pieces._scope(method="POST")
    too_large = [*scope["headers"], (b"content-length", str(MAX_BODY_BYTES + 1).encode())]
    assert (await call(limited, headers=too_large))[0] == 413
    assert (await call(bare, headers=too_large))[0] == 200
    # The benchmark's own request (no body) passes: the piece is timed on its fast path.
    assert (await call(limited))[0] == 200


async def test_replica_routing_with_no_replica_passes_requests_through() -> None:
    from flowforge.db import replicas

    routed, bare = pieces.middleware_apps()["replica routing (none configured)"]
    assert not replicas.REPLICAS  # what the piece's name says: none configured
    assert await call(routed) == await call(bare)


def test_every_piece_of_the_request_path_is_measured(tmp_path: Path) -> None:
    """`python -m benchmarks.pieces` for real on a tiny data set (seconds): every
    piece, the middleware ones and the database ones, gets a number and its spread."""
    database = database_name("pieces")
    out = tmp_path / "pieces.json"
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "benchmarks.pieces", "--runs", "2000", "--workflows", "100",
             "--users", "10", "--rounds", "2", "--calls", "20", "--out", str(out)],
            cwd=REPO_ROOT,
            env={**os.environ, "DATABASE_URL": server_url(), "BENCH_DATABASE": database},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        asyncio.run(drop_database(database))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    rows = json.loads(out.read_text())["pieces"]
    names = [row["piece"] for row in rows]
    assert len(names) == len(set(names)) == len(pieces.middleware_apps()) + 6, names
    assert names[: len(pieces.middleware_apps())] == list(pieces.middleware_apps())
    database_pieces = names[len(pieces.middleware_apps()) :]
    assert [name.split(":")[0] for name in database_pieces] == [
        "timeouts", "authentication", *["serialisation"] * 4,
    ]  # fmt: skip
    # The timeouts piece names as many SET LOCAL as the engine sets per transaction.
    from flowforge.core.settings import Settings
    from flowforge.db.engine import session_settings

    assert f"SET LOCAL x{len(session_settings(Settings()))} " in database_pieces[0]
    for row in rows:
        low, high = row["spread_us"]
        assert math.isfinite(row["cpu_us_per_request"]), row
        assert low <= row["cpu_us_per_request"] <= high, row
        assert row["rounds"] == 2 and row["calls_per_round"] >= 20, row
        assert row["piece"] in completed.stdout  # the printed table has every piece
    # The serialisation rows are absolute costs (baseline: nothing), so never below 0.
    assert all(row["cpu_us_per_request"] > 0 for row in rows[-4:]), rows[-4:]
