"""The benchmark machinery itself (no timing assertions: `make bench` measures speed)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import compare as guard
from benchmarks.harness import compare, format_table, percentile, robust_sd, rounds_needed
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
    assert len(summary["ratio_rounds"]) == 3
    low, high = summary["ratio_spread"]
    assert low <= summary["cost_ratio"] <= high
    assert "noop" in format_table([summary])


def test_every_printed_ratio_carries_its_spread() -> None:
    row = bench_row("trigger_run", 32, [1.10, 1.02, 1.31])
    table = format_table([row], smoke=True)
    assert "1.10 [1.02-1.31]" in table  # the median and the lowest-highest round
    assert "SMOKE RUN" in table
    assert "SMOKE RUN" not in format_table([row])


def test_one_disturbed_round_does_not_swamp_the_noise_estimate() -> None:
    steady = [1.10, 1.12, 1.08, 1.11, 1.09, 1.10, 1.13]
    assert robust_sd([*steady, 5.5]) < 0.05
    assert robust_sd([1.0]) != robust_sd([1.0])  # NaN from one round


async def test_the_multi_worker_pools_fit_the_servers_max_connections() -> None:
    from benchmarks import http

    budget = await http.pool_budget(4, None)
    assert budget.max_connections >= 4  # read from the server
    assert 1 <= budget.pool_max <= http.POOL_CAP
    assert budget.workers * budget.pool_max <= budget.free < budget.max_connections
    with pytest.raises(ValueError, match="do not fit"):
        await http.pool_budget(4, budget.max_connections)


def test_rounds_needed_grows_with_the_noise() -> None:
    assert rounds_needed(0.0) == 1
    assert rounds_needed(0.02) <= 3 < rounds_needed(0.05) < rounds_needed(0.1)


# -- the regression guard (benchmarks/compare.py), on synthetic results ----------------


def bench_row(operation: str, concurrency: int, ratios: list[float]) -> dict[str, object]:
    """A comparison as `make bench` writes it, from its per-round ratios."""
    ordered = sorted(ratios)
    side = {"throughput": 100.0, "p50_ms": 1.0, "p99_ms": 2.0, "operations": 100.0}
    return {
        "operation": operation, "concurrency": concurrency, "unit": "ops/s",
        "flowforge": side, "floor": side, "cost_ratio": ordered[len(ordered) // 2],
        "ratio_spread": [ordered[0], ordered[-1]], "ratio_rounds": ratios,
        "ratio_sd": 0.0, "rounds": len(ratios), "errors": 0,
    }  # fmt: skip


def result(*rows: dict[str, object], smoke: bool = False) -> dict[str, object]:
    return {"smoke": smoke, "through": "direct", "sizes": {"runs": 1}, "comparisons": list(rows)}


BEFORE = [1.05, 1.08, 1.09, 1.10, 1.11, 1.12, 1.15]  # ratio 1.10 [1.05-1.15], 7 rounds


def test_a_ratio_worse_beyond_both_spreads_fails_the_guard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = result(bench_row("list_runs_page", 32, BEFORE))
    new = result(bench_row("list_runs_page", 32, [1.18, 1.19, 1.20, 1.22, 1.25, 1.28, 1.30]))
    (verdict,) = guard.judge(old, new)
    assert verdict.judgement == "worse"
    assert verdict.chance == 1 / 3432  # C(14, 7): all seven new rounds above all seven old
    paths = write(tmp_path, old, new)
    assert guard.main(paths) == 1
    assert "WORSE" in capsys.readouterr().out


def test_a_ratio_worse_within_the_spread_passes_the_guard(tmp_path: Path) -> None:
    old = result(bench_row("list_runs_page", 32, BEFORE))
    # Median up 0.08, but the new lowest round (1.14) is inside the old spread.
    new = result(bench_row("list_runs_page", 32, [1.14, 1.16, 1.17, 1.18, 1.20, 1.22, 1.24]))
    (verdict,) = guard.judge(old, new)
    assert verdict.judgement == "same"
    assert guard.main(write(tmp_path, old, new)) == 0


def test_the_guard_judges_only_what_both_results_measured() -> None:
    old = result(
        bench_row("trigger_run", 1, BEFORE),
        {"operation": "trigger_run", "concurrency": 32, "cost_ratio": 1.0},  # before spreads
    )
    new = result(
        bench_row("trigger_run", 1, [0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97]),  # better
        bench_row("trigger_run", 32, [3.0, 3.1, 3.2]),
        bench_row("trigger_run", 128, [3.0, 3.1, 3.2]),  # new: nothing to compare with
    )
    verdicts = {(v.operation, v.concurrency): v.judgement for v in guard.judge(old, new)}
    assert verdicts == {("trigger_run", 1): "better", ("trigger_run", 32): "no spread"}
    # Smoke runs: 3 rounds each would be all worse by chance once in 20 ratios.
    smoke = guard.judge(
        result(bench_row("trigger_run", 1, [1.0, 1.0, 1.0])),
        result(bench_row("trigger_run", 1, [3.0, 3.1, 3.2])),
    )
    assert [v.judgement for v in smoke] == ["too few rounds"]
    assert guard.regressions(guard.judge(old, new)) == []
    assert any("smoke" in w for w in guard.warnings(old, result(smoke=True)))


def test_the_guard_judges_the_http_layer_ratios_too() -> None:
    old = result() | {"http_vs_in_process": [bench_row("http:list_runs_page", 32, BEFORE)]}
    worse = [1.18, 1.19, 1.20, 1.22, 1.25, 1.28, 1.30]
    new = result() | {"http_vs_in_process": [bench_row("http:list_runs_page", 32, worse)]}
    (verdict,) = guard.judge(old, new)
    assert (verdict.operation, verdict.judgement) == ("http:list_runs_page", "worse")


def test_every_hot_route_runs_over_http_and_in_process(tmp_path: Path) -> None:
    """The HTTP-vs-in-process comparison runs each hot route through the real app
    under uvicorn and in-process, with no error (a route or request that no longer
    fits fails here, not in the next `make bench`)."""
    database = database_name("httpfloor")
    out = tmp_path / "http.json"
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "benchmarks.http_floor", "--runs", "2000", "--workflows", "100",
             "--users", "10", "--rounds", "1", "--operations", "10", "--concurrency", "1,4",
             "--out", str(out)],
            cwd=REPO_ROOT,
            env={**os.environ, "DATABASE_URL": server_url(), "BENCH_DATABASE": database},
            capture_output=True,
            text=True,
            timeout=600,
        )  # fmt: skip
    finally:
        asyncio.run(drop_database(database))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    rows = json.loads(out.read_text())["http_vs_in_process"]
    from benchmarks.http_floor import HTTP_ROUTES

    assert {(row["operation"], row["concurrency"]) for row in rows} == {
        (f"http:{name}", concurrency) for name in HTTP_ROUTES for concurrency in (1, 4)
    }
    assert all(row["errors"] == 0 and row["app_cpu_ms_per_request"] > 0 for row in rows), rows


def test_make_bench_drains_the_queue_in_process_and_over_http(tmp_path: Path) -> None:
    """`make bench`'s queue section after one operation (whose engine settings, a
    pool of 20, stay in the environment) and no HTTP runs: both drains empty the
    queue, every run claimed once and completed, the figures in the JSON."""
    database = database_name("benchq")
    out = tmp_path / "bench.json"
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "benchmarks", "--runs", "2000", "--workflows", "100",
             "--users", "10", "--only", "trigger_run", "--rounds", "1", "--operations", "10",
             "--skip-http", "--queue-runs", "300", "--queue-workers", "4", "--out", str(out)],
            cwd=REPO_ROOT,
            env={**os.environ, "DATABASE_URL": server_url(), "BENCH_DATABASE": database},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        asyncio.run(drop_database(database))
        asyncio.run(drop_database(f"{database}_queue"))  # dropped by the run; not if it failed
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    queue = json.loads(out.read_text())["queue"]
    assert (queue["runs"], queue["workers"]) == (300, 4)
    for side in ("drain_in_process", "drain_http"):
        row = queue[side]
        assert row["runs"] == row["expected"] == 300, row
        assert row["duplicates"] == row["claimed_twice"] == row["errors"] == row["left"] == 0, row
        assert row["claims"] >= 300 // 10 and row["claim_p99_ms"] >= row["claim_p50_ms"] > 0, row
    assert "queue drain" in completed.stdout and "over HTTP" in completed.stdout


def test_a_run_claimed_twice_or_left_over_fails_the_queue_section() -> None:
    from benchmarks.queue import failures

    clean = {"duplicates": 0, "claimed_twice": 0, "errors": 0, "left": 0}
    assert failures({"drain_in_process": clean, "drain_http": clean}) == []
    assert failures({}) == []  # --skip-queue
    found = failures(
        {"drain_in_process": clean | {"claimed_twice": 2}, "drain_http": clean | {"left": 5}}
    )
    assert found == [
        "queue drain_in_process: 2 claimed twice",
        "queue drain_http: 5 not completed",
    ]


def test_the_guard_lists_the_queue_drain_without_judging_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The drain has no floor and no rounds: no spread to judge a change by."""
    drain = {"runs_per_second": 300, "claim_p50_ms": 50.0, "claim_p99_ms": 200.0}
    old = result(bench_row("trigger_run", 1, BEFORE)) | {"queue": {"drain_in_process": drain}}
    slower = drain | {"runs_per_second": 30, "claim_p99_ms": 2000.0}
    new = result(bench_row("trigger_run", 1, BEFORE)) | {
        "queue": {"drain_in_process": slower, "drain_http": drain}
    }
    assert [v.operation for v in guard.judge(old, new)] == ["trigger_run"]
    assert guard.report(old, new, "old", "new") == 0
    out = capsys.readouterr().out
    assert "queue drain in-process: 300 runs/s, claim p99 200.0 ms -> 30 runs/s" in out
    assert "queue drain over HTTP: - -> 300 runs/s" in out
    assert out.count("not judged: one drain") == 2


def test_a_file_that_is_not_a_result_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "junk.json").write_text("[1, 2]")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--compare", str(tmp_path / "junk.json")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "not a `make bench` result" in result.stderr
    assert "Traceback" not in result.stderr


def write(tmp_path: Path, old: dict[str, object], new: dict[str, object]) -> list[str]:
    paths = [tmp_path / "old.json", tmp_path / "new.json"]
    for path, report in zip(paths, (old, new), strict=True):
        path.write_text(json.dumps(report))
    return [str(path) for path in paths]


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
             "--skip-queue", "--fresh", "--out", str(out)],
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


# The release before migration 2026-12-07T15:58:32 (api_keys.granted_by_key_id):
# the code that serves while that migration and the next one run.
BEFORE_GRANTED_BY = "a38e0a4^"


def test_the_migration_benchmark_runs_a_range_under_load_and_keeps_every_row(
    tmp_path: Path,
) -> None:
    """`python -m benchmarks.migrations` on a 2k-run base: the granted-by migrations
    forwards, backwards and forwards again through the CLI while the app (the
    release before them, under uvicorn) is loaded over HTTP; a real run."""
    if subprocess.run(
        ["git", "cat-file", "-e", f"{BEFORE_GRANTED_BY}^{{commit}}"],
        cwd=REPO_ROOT, capture_output=True, check=False,
    ).returncode:  # fmt: skip
        pytest.skip("the checkout has no git history to serve the earlier release from")
    prefix = database_name("bench_migrations")
    out = tmp_path / "migrations.json"
    env = {**os.environ, "DATABASE_URL": server_url(), "BENCH_DATABASE": prefix}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.migrations", "--runs", "2000", "--fresh",
             "--from", "2026-12-07T15:58:32", "--to", "2026-12-07T15:58:40",
             "--app-ref", BEFORE_GRANTED_BY, "--settle", "1", "--out", str(out)],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    finally:
        for suffix in ("base", "run"):
            asyncio.run(drop_database(f"{prefix}_{suffix}"))
    report = json.loads(out.read_text())
    steps = [(step["phase"], step["migration"]) for step in report["steps"]]
    assert steps == [
        ("forwards", "2026-12-07T15:58:32:404747"),
        ("forwards", "2026-12-07T15:58:40:000000"),
        ("backwards", "2026-12-07T15:58:40:000000"),
        ("backwards", "2026-12-07T15:58:32:404747"),
        ("forwards again", "2026-12-07T15:58:32:404747"),
        ("forwards again", "2026-12-07T15:58:40:000000"),
    ], result.stdout[-3000:]
    assert all(step["ok"] and step["load"]["requests"] > 0 for step in report["steps"])
    assert report["load"]["errors"] == 0, report["first_errors"]
    for phase, check in report["rows"].items():
        assert check["base"]["kept"], (phase, check)
        assert check["writers"]["kept"], (phase, check)
        assert check["writers"]["runs"] > 0
    assert report["base_rows"]["workflow_runs"] == 2000
    # The timing target is the 1M run's verdict; here only that it is judged.
    assert "longest_request_ms" in report["verdict"]
    assert "verdict:" in result.stdout


def test_the_migration_benchmark_tells_lost_and_changed_rows_from_a_backfill() -> None:
    from benchmarks.migrations import compare_rows

    base = {
        "runs": {"rows": 3, "columns": {"id": (3, "1"), "status": (3, "2"), "new": (0, "0"),
                                        "updated_at": (3, "4")}},
        "logs": {"rows": 2, "columns": {"id": (2, "5")}},
    }  # fmt: skip
    same = {
        "runs": {"rows": 3, "columns": {"id": (3, "1"), "status": (3, "2"), "new": (3, "9"),
                                        "updated_at": (3, "4"), "added": (3, "7")}},
        "logs": {"rows": 2, "columns": {"id": (2, "5")}},
    }  # fmt: skip
    assert compare_rows(base, same)["kept"]  # a column NULL in the base may be filled
    changed = json.loads(json.dumps(same))
    changed["runs"]["columns"]["status"] = [3, "3"]
    changed["runs"]["columns"]["updated_at"] = [3, "8"]
    changed["logs"]["rows"] = 1
    verdict = compare_rows(base, changed)
    assert not verdict["kept"]
    assert verdict["lost"] == {"logs": 1}
    assert verdict["changed_columns"] == {"runs": ["status"]}
    assert verdict["updated_at_restamped"] == ["runs"]


def test_the_migration_benchmark_refuses_a_bad_range() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.migrations", "--from", "2099-01-01"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "matches 0 migrations" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_lock_hold_is_a_run_of_consecutive_samples() -> None:
    """One migration session that locks a table in two steps, minutes apart, held
    it twice briefly, not for minutes (the first 1M run reported 127 s so)."""
    from benchmarks.migrations import LockWatch

    watch = LockWatch("unused")
    for now, seen in ((0.0, True), (0.1, True), (0.15, False), (60.0, True), (60.05, True)):
        watch._sample("hold", {(7, "workflow_runs"): "workflow_runs"} if seen else {}, now)
    result = watch.result()
    assert result["longest_exclusive_seconds"] == 0.1
    assert result["longest_exclusive_on"] == "workflow_runs"


def test_the_http_comparison_gives_every_caller_two_calls_and_enough_runs_at_c128() -> None:
    from benchmarks import http_floor

    assert http_floor.CONCURRENCIES == (1, 32, 128)
    for name in http_floor.HTTP_ROUTES:
        for concurrency in http_floor.CONCURRENCIES:
            assert http_floor.calls_per_round(name, concurrency, 100) >= 2 * concurrency
    # Runs started by the transition rounds: both sides' rounds and warm-ups at each concurrency.
    transition = "transition (start+complete)"
    taken = sum(
        2 * 3 * http_floor.calls_per_round(transition, c, 100)
        + 2 * min(http_floor.WARMUP, http_floor.calls_per_round(transition, c, 100))
        for c in http_floor.CONCURRENCIES
    )
    assert http_floor.pending_runs_needed(http_floor.CONCURRENCIES, 100, 3) > taken


def test_the_help_documents_the_queue_section() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert completed.returncode == 0
    for flag in ("--skip-queue", "--queue-runs", "--queue-workers"):
        assert flag in completed.stdout


async def test_the_data_set_gives_its_sample_runs_the_history_the_triggers_write(
    database_url: str,
) -> None:
    """The load runs with triggers off; the sample runs (the ones get_run_history
    reads) get their history from the loader: for each, the run's own entries
    chain from its creation to its status, and each attempt's from running to its
    status, as the triggers record them."""
    import asyncpg

    from benchmarks import dataset
    from tests import support

    name = database_name("bench_history")
    url = await support.create_database(name, template=database_name("template"))
    try:
        connection = await asyncpg.connect(url)
        try:
            loaded = await dataset.load(connection, dataset.Sizes(users=5, workflows=20, runs=2000))
            runs = await connection.fetch(
                "SELECT id, status FROM workflow_runs WHERE id = ANY($1::uuid[])",
                loaded.sample_run_ids,
            )
            entries = await connection.fetch(
                "SELECT run_id, step_log_id, from_status, to_status FROM run_history "
                "ORDER BY recorded_at, id"
            )
            attempts = await connection.fetch(
                "SELECT id, status FROM run_step_logs WHERE run_id = ANY($1::uuid[])",
                loaded.sample_run_ids,
            )
        finally:
            await connection.close()
    finally:
        await drop_database(name)
    assert len(runs) == len(loaded.sample_run_ids) > 0
    assert {entry["run_id"] for entry in entries} == set(loaded.sample_run_ids)
    chains: dict[object, list[tuple[str | None, str]]] = {}
    for entry in entries:
        key = entry["step_log_id"] or entry["run_id"]
        chains.setdefault(key, []).append((entry["from_status"], entry["to_status"]))
    for status_of in (
        {r["id"]: r["status"] for r in runs},
        {a["id"]: a["status"] for a in attempts},
    ):
        for key, status in status_of.items():
            chain = chains[key]
            assert chain[0][0] is None, chain
            assert all(a[1] == b[0] for a, b in itertools.pairwise(chain)), chain
            assert chain[-1][1] == status, chain


def test_the_queue_depth_study_interleaves_its_depths_and_reports_a_ratio() -> None:
    """`python -m benchmarks.queue --skip-drains` as the README spells it, tiny: a
    database per depth, stocked and dropped; each claimer count measured at every
    depth in every round, and the deep-over-shallow ratio taken per round."""
    database = database_name("benchdepth")
    depths = (2000, 4000)
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "benchmarks.queue", "--skip-drains",
             "--depths", ",".join(map(str, depths)), "--depth-rounds", "2",
             "--depth-seconds", "0.3"],
            cwd=REPO_ROOT,
            env={**os.environ, "DATABASE_URL": server_url(), "BENCH_DATABASE": database},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        for depth in depths:
            asyncio.run(
                drop_database(f"{database}_d{depth}")
            )  # dropped by the run; not if it failed
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    study = json.loads((REPO_ROOT / "benchmarks/results/queue-latest.json").read_text())[
        "depth_study"
    ]
    assert study["depths"] == list(depths) and study["rounds"] == 2
    assert set(study["claimers"]) == {"1", "8"}
    for row in study["claimers"].values():
        assert set(row["per_depth"]) == {"2000", "4000"}
        for depth in row["per_depth"].values():
            assert len(depth["rounds"]) == 2 and depth["claims_per_second"] > 0
        assert len(row["ratio_rounds"]) == 2
        low, high = row["ratio_spread"]
        assert low <= row["deep_over_shallow"] <= high and low > 0
    assert "claim of 10 vs depth" in completed.stdout


def test_the_queue_benchmark_refuses_a_depth_too_shallow_to_claim_from() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.queue", "--depths", "10,10000"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert completed.returncode == 2
    assert "--depths: each at least 2000" in completed.stderr
