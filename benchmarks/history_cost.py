"""What writing run history costs a run's writes (issue 17, docs/decisions/14-run-history.md).

    BENCH_DATABASE=... .venv/bin/python -m benchmarks.history_cost [--lifecycles 400] [--rounds 6]

On a benchmark database (benchmarks/dataset.py: build it first with ``make
bench``, or ``--quick`` for the 100k-run one, same BENCH_DATABASE), runs
``lifecycles`` run lifecycles inside the server (one ``DO`` block, so no network
or client time is measured): insert a run, start it, insert a running step
attempt, finish it, complete the run - five status changes, five history rows -
in a transaction that is rolled back. Three ways, interleaved (forwards, then
backwards) over ``rounds`` rounds:

* ``none``: the four history triggers disabled (``ALTER TABLE ... DISABLE
  TRIGGER`` inside the rolled-back transaction: nobody else sees it);
* ``call``: the triggers on, their functions replaced by an empty one (the cost
  of calling a plpgsql trigger);
* ``history``: as deployed.

The machine is shared and noisy: each way's *fastest* round is its figure (the
least disturbed one), and the difference per history row is printed. The
benchmark's floor (``make bench``) runs on the same schema and fires the same
triggers, so its FlowForge/floor ratios do not show this cost: this does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from typing import Any

import asyncpg

from benchmarks.dataset import DATABASE, database_url

TRIGGERS = [
    ("workflow_runs", "workflow_runs_history_created"),
    ("workflow_runs", "workflow_runs_history_status"),
    ("run_step_logs", "run_step_logs_history_created"),
    ("run_step_logs", "run_step_logs_history_status"),
]
FUNCTIONS = ["flowforge_run_history_of_run", "flowforge_run_history_of_attempt"]
CHANGES_PER_LIFECYCLE = 5

LIFECYCLES = """
DO $$
DECLARE w uuid; r record; started timestamptz;
BEGIN
    SELECT id INTO w FROM workflows WHERE is_active ORDER BY id LIMIT 1;
    started := clock_timestamp();
    FOR i IN 1..{count} LOOP
        INSERT INTO workflow_runs (workflow_id) VALUES (w) RETURNING id, created_at INTO r;
        UPDATE workflow_runs SET status = 'running', started_at = clock_timestamp()
        WHERE id = r.id;
        INSERT INTO run_step_logs (run_id, run_created_at, step_position, step_name, status,
                                   started_at)
        VALUES (r.id, r.created_at, 0, 's', 'running', clock_timestamp());
        UPDATE run_step_logs SET status = 'completed', finished_at = clock_timestamp()
        WHERE run_id = r.id AND run_created_at = r.created_at;
        UPDATE workflow_runs SET status = 'completed', finished_at = clock_timestamp()
        WHERE id = r.id;
    END LOOP;
    RAISE NOTICE '%', extract(epoch FROM clock_timestamp() - started) * 1000;
END
$$
"""


async def one_round(connection: asyncpg.Connection, way: str, count: int) -> float:
    notices: list[float] = []

    def listener(_: Any, message: Any) -> None:
        notices.append(float(message.message))

    connection.add_log_listener(listener)
    transaction = connection.transaction()
    await transaction.start()
    try:
        verb = "DISABLE" if way == "none" else "ENABLE"
        for table, trigger in TRIGGERS:
            await connection.execute(f"ALTER TABLE {table} {verb} TRIGGER {trigger}")
        if way == "call":
            for function in FUNCTIONS:
                await connection.execute(
                    f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger "
                    "LANGUAGE plpgsql AS $f$ BEGIN RETURN NULL; END $f$"
                )
        await connection.execute(LIFECYCLES.format(count=int(count)))
    finally:
        await transaction.rollback()
        connection.remove_log_listener(listener)
    return notices[-1] / count


async def measure(lifecycles: int, rounds: int) -> dict[str, Any]:
    connection = await asyncpg.connect(database_url())
    ways = ["none", "call", "history"]
    results: dict[str, list[float]] = {way: [] for way in ways}
    try:
        for index in range(rounds):
            for way in ways if index % 2 == 0 else reversed(ways):
                results[way].append(await one_round(connection, way, lifecycles))
    finally:
        await connection.close()
    best = {way: min(times) for way, times in results.items()}
    per_row = (best["history"] - best["none"]) / CHANGES_PER_LIFECYCLE * 1000
    return {
        "database": DATABASE,
        "lifecycles": lifecycles,
        "rounds": rounds,
        "ms_per_lifecycle_best": {way: round(value, 4) for way, value in best.items()},
        "ms_per_lifecycle_median": {
            way: round(statistics.median(times), 4) for way, times in results.items()
        },
        "us_per_history_row": round(per_row, 1),
        "us_per_trigger_call": round(
            (best["call"] - best["none"]) / CHANGES_PER_LIFECYCLE * 1000, 1
        ),
        "lifecycle_ratio": round(best["history"] / best["none"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lifecycles", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=6)
    arguments = parser.parse_args()
    summary = asyncio.run(measure(arguments.lifecycles, arguments.rounds))
    best = summary["ms_per_lifecycle_best"]
    print(
        f"per lifecycle (5 status changes, in the server): {best['none']:.3f} ms without "
        f"history, {best['call']:.3f} ms with empty triggers, {best['history']:.3f} ms with "
        f"history (x{summary['lifecycle_ratio']:.2f}); one history row "
        f"{summary['us_per_history_row']:.0f} us, of which the trigger call "
        f"{summary['us_per_trigger_call']:.0f} us"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
