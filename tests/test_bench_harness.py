"""The benchmark machinery itself (no timing assertions: `make bench` measures speed)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.harness import compare, format_table, percentile
from tests.support import REPO_ROOT, database_name, drop_database, server_url


def test_percentile() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.5) in (50.0, 51.0)
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) != percentile([], 0.5)  # NaN for no data


async def test_compare_interleaves_both_sides_and_counts_every_call() -> None:
    calls: list[str] = []

    async def ours(n: int) -> None:
        calls.append("ours")

    async def floor(n: int) -> None:
        calls.append("floor")

    comparison = await compare(
        "noop", ours, floor, concurrency=4, operations=10, rounds=3, warmup=2
    )
    summary = comparison.summary()
    assert summary["rounds"] == 3
    assert summary["flowforge"]["operations"] == 30
    assert summary["floor"]["operations"] == 30
    assert calls.count("ours") == calls.count("floor") == 32  # 30 + 2 warm-up
    assert summary["cost_ratio"] > 0
    assert "noop" in format_table([summary])


def test_bad_arguments_are_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--runs", "0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--runs must be at least 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_operation_runs_on_both_sides(tmp_path: Path) -> None:
    """Each FlowForge side and its floor run against the real migrated schema (a
    floor that no longer fits the schema fails here, not in the next `make bench`)."""
    from benchmarks.ops import OPERATIONS

    database = database_name("bench")
    out = tmp_path / "bench.json"
    try:
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks", "--runs", "2000", "--workflows", "100",
             "--users", "10", "--rounds", "1", "--operations", "10", "--skip-http",
             "--fresh", "--out", str(out)],
            cwd=REPO_ROOT,
            env={**os.environ, "DATABASE_URL": server_url(), "BENCH_DATABASE": database},
            capture_output=True,
            text=True,
            timeout=600,
        )  # fmt: skip
    finally:
        asyncio.run(drop_database(database))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    measured = {summary["operation"] for summary in report["comparisons"]}
    assert measured == set(OPERATIONS)
    assert all(summary["errors"] == 0 for summary in report["comparisons"]), report["comparisons"]


def test_the_retention_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    """`python -m benchmarks.partitions` on a tiny base: the migration forwards,
    backwards and forwards with a writer, both retention passes through the real
    CLI (a pass that no longer fits the schema fails here, not at the next 1M run)."""
    prefix = database_name("bench_partitions")
    out = tmp_path / "partitions.json"
    env = {**os.environ, "DATABASE_URL": server_url(), "BENCH_DATABASE_PREFIX": prefix}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.partitions", "--runs", "2000", "--fresh",
             "--out", str(out)],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    finally:
        for suffix in ("base", "delete", "partition"):
            asyncio.run(drop_database(f"{prefix}_{suffix}"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["delete"]["runs"] and report["partition"]
