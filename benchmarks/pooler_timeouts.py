"""What enforcing timeouts per transaction costs behind PgBouncer (docs/decisions/08-transaction-poolers.md).

    .venv/bin/python -m benchmarks.pooler_timeouts [--transactions 2000] [--rounds 6]

Starts a PgBouncer (transaction mode, tests/pgbouncer.py) in front of the server
DATABASE_URL names (or the embedded one) and runs the same small transaction
(``SELECT 1`` between BEGIN and COMMIT, on a pool of 8 with 8 concurrent
clients) two ways, interleaved ABBA over ``rounds`` rounds:

* ``plain``: ``BEGIN`` (what a session-level or role-level setting would allow);
* ``set_local``: ``BEGIN; SET LOCAL statement_timeout ...; SET LOCAL
  idle_in_transaction_session_timeout ...`` in one message (what FlowForge sends
  with ``DATABASE_POOLER=transaction``).

Prints the median transactions/s of each and the cost ratio; JSON in
benchmarks/results/pooler-timeouts-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.uuid_keys import server_url
from flowforge.core.settings import Settings
from flowforge.db.engine import session_settings
from flowforge.db.sql.session import begin_statement

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results"
CONCURRENCY = 8


async def one_round(pool: asyncpg.Pool, begin: str, transactions: int) -> float:
    remaining = iter(range(transactions))

    async def client() -> None:
        for _ in remaining:
            async with pool.acquire() as connection:
                await connection.execute(begin)
                await connection.fetchval("SELECT 1")
                await connection.execute("COMMIT")

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return transactions / (time.perf_counter() - started)


async def measure(transactions: int, rounds: int) -> dict[str, Any]:
    from tests.pgbouncer import pgbouncer, via

    ways = {
        "plain": "BEGIN",
        "set_local": begin_statement(session_settings(Settings())),
    }
    server = server_url()
    async with pgbouncer(server) as port:
        pool = await asyncpg.create_pool(
            via(port, server), min_size=CONCURRENCY, max_size=CONCURRENCY, statement_cache_size=0
        )
        try:
            rates: dict[str, list[float]] = {way: [] for way in ways}
            for number in range(rounds):
                order = list(ways) if number % 2 == 0 else list(reversed(ways))
                for way in order:
                    rates[way].append(await one_round(pool, ways[way], transactions))
        finally:
            await pool.close()
    medians = {way: statistics.median(values) for way, values in rates.items()}
    return {
        "transactions_per_round": transactions,
        "rounds": rounds,
        "concurrency": CONCURRENCY,
        "begin": ways,
        "transactions_per_second": rates,
        "median_transactions_per_second": medians,
        "cost_ratio_set_local": round(medians["plain"] / medians["set_local"], 3),
    }


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(REPO_ROOT))  # tests.pgbouncer
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pooler_timeouts", description=__doc__
    )
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.transactions < 1 or args.rounds < 1:
        parser.error("--transactions and --rounds must be positive")
    result = asyncio.run(measure(args.transactions, args.rounds))
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS / f"pooler-timeouts-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median_transactions_per_second"]), result["cost_ratio_set_local"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
