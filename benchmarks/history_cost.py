"""What writing run history costs the hot paths (issue 17, docs/decisions/14-run-history.md).

    BENCH_DATABASE=... .venv/bin/python -m benchmarks.history_cost [--operations 300] [--rounds 8]

On the benchmark data set (benchmarks/dataset.py: build it first with
``make bench``, or ``--quick`` for the 100k-run one, same BENCH_DATABASE), runs
FlowForge's own statements for a trigger (``TRIGGER_RUN``) and a transition
pair (start, then complete with ``CLOSE_ATTEMPTS``), each in its own
transaction, concurrency 1, two ways interleaved ABBA over ``rounds`` rounds:

* ``history``: as deployed, the run_history triggers on;
* ``none``: the same statements with the four history triggers disabled
  (``ALTER TABLE ... DISABLE TRIGGER``, on this benchmark database only).

Prints the median per-operation latency of each and their ratio: the price of
the history row (one plpgsql call, one INSERT, its foreign-key check). The
benchmark's floor runs on the same schema and fires the same triggers, so the
FlowForge/floor ratios of ``make bench`` do not show this cost: this does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import asyncpg

from benchmarks.dataset import DATABASE, database_url
from flowforge.core import events
from flowforge.db.sql.runs import CLOSE_ATTEMPTS, TRANSITION_RUN, TRIGGER_RUN

TRIGGERS = [
    ("workflow_runs", "workflow_runs_history_created"),
    ("workflow_runs", "workflow_runs_history_status"),
    ("run_step_logs", "run_step_logs_history_created"),
    ("run_step_logs", "run_step_logs_history_status"),
]


async def switch(connection: asyncpg.Connection, on: bool) -> None:
    verb = "ENABLE" if on else "DISABLE"
    for table, trigger in TRIGGERS:
        await connection.execute(f"ALTER TABLE {table} {verb} TRIGGER {trigger}")


async def trigger_once(connection: asyncpg.Connection, workflow: Any, n: int) -> Any:
    async with connection.transaction():
        row = await connection.fetchrow(
            TRIGGER_RUN, workflow, "manual", None, json.dumps({"n": n}), None, None
        )
    return row


async def transitions_once(connection: asyncpg.Connection, run: Any) -> None:
    for target, allowed in (("running", ["pending"]), ("completed", ["running"])):
        async with connection.transaction():
            row = await connection.fetchrow(
                TRANSITION_RUN,
                run["id"],
                target,
                allowed,
                None,
                None,
                None,
                events.RUN_EVENT_BY_STATUS[target],
            )
            if target == "completed":
                await connection.execute(
                    CLOSE_ATTEMPTS,
                    run["id"],
                    row["created_at"],
                    "run completed",
                    run["workflow_id"],
                )


async def one_round(
    connection: asyncpg.Connection, workflows: list[Any], operations: int
) -> dict[str, float]:
    created = []
    started = time.perf_counter()
    for n in range(operations):
        created.append(await trigger_once(connection, workflows[n % len(workflows)], n))
    trigger_ms = (time.perf_counter() - started) * 1000 / operations
    started = time.perf_counter()
    for run in created:
        await transitions_once(connection, run)
    transition_ms = (time.perf_counter() - started) * 1000 / operations
    return {"trigger": trigger_ms, "transitions": transition_ms}


async def measure(operations: int, rounds: int) -> dict[str, Any]:
    connection = await asyncpg.connect(database_url())
    try:
        workflows = [
            row["id"]
            for row in await connection.fetch(
                "SELECT id FROM workflows WHERE is_active ORDER BY id LIMIT 200"
            )
        ]
        results: dict[str, list[dict[str, float]]] = {"history": [], "none": []}
        order = ["history", "none", "none", "history"]
        try:
            for index in range(rounds):
                side = order[index % len(order)]
                await switch(connection, side == "history")
                results[side].append(await one_round(connection, workflows, operations))
        finally:
            await switch(connection, True)
    finally:
        await connection.close()
    summary: dict[str, Any] = {"operations": operations, "rounds": rounds, "database": DATABASE}
    for path in ("trigger", "transitions"):
        history = statistics.median(r[path] for r in results["history"])
        none = statistics.median(r[path] for r in results["none"])
        summary[path] = {
            "history_ms": round(history, 3),
            "none_ms": round(none, 3),
            "ratio": round(history / none, 3),
            "rounds_history_ms": [round(r[path], 3) for r in results["history"]],
            "rounds_none_ms": [round(r[path], 3) for r in results["none"]],
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--operations", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=8)
    arguments = parser.parse_args()
    summary = asyncio.run(measure(arguments.operations, arguments.rounds))
    for path in ("trigger", "transitions"):
        figures = summary[path]
        print(
            f"{path:12} with history {figures['history_ms']:.3f} ms, without "
            f"{figures['none_ms']:.3f} ms per operation: ratio {figures['ratio']:.2f}"
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
