"""The cost of each piece of the request path, on its own: CPU microseconds per request.

Each piece runs alone around a trivial ASGI app (or, for the database pieces,
around an empty transaction), driven in-process with a synthetic request: no
server, no network, no load generator, so what is measured is the piece's own
CPU (``time.process_time``). Each piece is timed in interleaved rounds against
the bare baseline; the cost is the median over rounds of (piece - baseline),
with the spread of the rounds. Pieces:

* request id + metrics (RequestObservability with no access line),
* access line (every request; JSON, to /dev/null), and sampled at 10%,
* body size limit, replica routing,
* per-transaction timeouts (``BEGIN; SET LOCAL ...`` behind a pooler vs ``BEGIN``),
* authentication: the key lookup vs a remembered key,
* serialisation: a page of 50 runs and a run with its step logs, as the routes
  did (model per item, then FastAPI's check and encode) vs now (one encode).

``python -m benchmarks.pieces`` (needs the benchmark data set: run
``python -m benchmarks.http_floor`` or ``make bench`` once).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks import dataset

Piece = Callable[[], Awaitable[Any]]


def _scope(path: str = "/api/v1/runs/x", method: str = "GET") -> dict[str, Any]:
    return {
        "type": "http", "method": method, "path": path, "raw_path": path.encode(),
        "root_path": "", "query_string": b"", "client": ("127.0.0.1", 5000),
        "headers": [(b"host", b"test"), (b"authorization", b"Bearer x")],
        "app": None, "state": {},
    }  # fmt: skip


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Any) -> None:
    return None


async def _bare_app(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 200,
         "headers": [(b"content-type", b"application/json")]}
    )  # fmt: skip
    await send({"type": "http.response.body", "body": b"{}"})


def _asgi(app: Any) -> Piece:
    async def call() -> None:
        await app(_scope(), _receive, _send)

    return call


async def _time(piece: Piece, calls: int) -> float:
    """CPU seconds per call."""
    started = time.process_time()
    for _ in range(calls):
        await piece()
    return (time.process_time() - started) / calls


async def measure(
    name: str, piece: Piece, baseline: Piece, *, calls: int, rounds: int
) -> dict[str, Any]:
    for _ in range(max(1, calls // 10)):  # warm up
        await piece()
        await baseline()
    costs = []
    for index in range(rounds):
        order = [piece, baseline] if index % 2 == 0 else [baseline, piece]
        timed = {id(side): await _time(side, calls) for side in order}
        costs.append((timed[id(piece)] - timed[id(baseline)]) * 1e6)
    return {
        "piece": name,
        "cpu_us_per_request": statistics.median(costs),
        "spread_us": [min(costs), max(costs)],
        "rounds": rounds,
        "calls_per_round": calls,
    }


def middleware_apps() -> dict[str, tuple[Any, Any]]:
    """Each middleware piece: (the trivial app wrapped in it, its baseline app)."""
    from flowforge.api.limits import BodySizeLimit
    from flowforge.api.observability import RequestObservability
    from flowforge.db.replicas import ReplicaRouting

    return {
        "request id + metrics": (RequestObservability(_bare_app, 0.0), _bare_app),
        "access line, every request (JSON)": (
            RequestObservability(_bare_app, 1.0),
            RequestObservability(_bare_app, 0.0),
        ),
        "access line, ACCESS_LOG_SAMPLE=0.1": (
            RequestObservability(_bare_app, 0.1),
            RequestObservability(_bare_app, 0.0),
        ),
        "body size limit": (BodySizeLimit(_bare_app), _bare_app),
        "replica routing (none configured)": (ReplicaRouting(_bare_app), _bare_app),
    }


def middleware_pieces() -> dict[str, tuple[Piece, Piece]]:
    return {
        name: (_asgi(app), _asgi(baseline)) for name, (app, baseline) in middleware_apps().items()
    }


async def database_pieces(loaded: dataset.Loaded, key: str) -> dict[str, tuple[Piece, Piece]]:
    from flowforge.api.deps import request_transaction
    from flowforge.core.settings import get_settings
    from flowforge.db.engine import DB, session_settings
    from flowforge.db.sql.session import begin_statement
    from flowforge.domain import api_keys, runs

    presented = api_keys.parse_key(key)
    limits = session_settings(get_settings())
    plain = begin_statement({})
    with_timeouts = begin_statement(limits)

    def transaction(statement: str) -> Piece:
        async def call() -> None:
            async with DB.pool.acquire() as connection:
                await connection.execute(statement)
                await connection.execute("COMMIT")

        return call

    async def lookup() -> None:
        async with DB.transaction():
            await api_keys.authenticate(presented)

    async def remembered() -> None:
        api_keys.PRINCIPALS.put(presented, principal)
        async with request_transaction(presented):
            pass

    async with DB.transaction():
        principal = await api_keys.authenticate(presented)

    return {
        f"timeouts: BEGIN; SET LOCAL x{len(limits)} vs BEGIN": (
            transaction(with_timeouts),
            transaction(plain),
        ),
        "authentication: key lookup vs remembered key": (lookup, remembered),
        **await serialisation_pieces(loaded, runs),
    }


async def serialisation_pieces(loaded: dataset.Loaded, runs: Any) -> dict[str, tuple[Piece, Piece]]:
    from pydantic import TypeAdapter
    from starlette.responses import Response

    from flowforge.api.responses import json_response
    from flowforge.api.routes.runs import ENCODE_DETAIL, ENCODE_PAGE, RunDetail, RunOut
    from flowforge.api.schemas import Page
    from flowforge.db.engine import DB
    from flowforge.db.tables import RunStatus

    async with DB.transaction():
        items, cursor = await runs.list_runs(
            loaded.busy_workflow_ids[0], status=RunStatus.COMPLETED, limit=50
        )
        detail = await runs.get_run(loaded.sample_run_ids[0])
    page_adapter = TypeAdapter(Page[RunOut])
    detail_adapter = TypeAdapter(RunDetail)

    async def page_before() -> None:
        page = Page[RunOut](items=[RunOut(**item) for item in items], next_cursor=cursor)
        page_adapter.dump_json(page_adapter.validate_python(page))

    async def page_after() -> None:
        json_response({"items": items, "next_cursor": cursor}, ENCODE_PAGE, Response())

    async def detail_before() -> None:
        model = RunDetail(**detail)
        detail_adapter.dump_json(detail_adapter.validate_python(model))

    async def detail_after() -> None:
        json_response(detail, ENCODE_DETAIL, Response())

    async def nothing() -> None:
        return None

    return {
        "serialisation: page of 50 runs, models + check + encode": (page_before, nothing),
        "serialisation: page of 50 runs, one encode (now)": (page_after, nothing),
        f"serialisation: run + {len(detail['step_logs'])} logs, model + check + encode": (
            detail_before,
            nothing,
        ),
        f"serialisation: run + {len(detail['step_logs'])} logs, one encode (now)": (
            detail_after,
            nothing,
        ),
    }


async def run_all(
    loaded: dataset.Loaded, *, rounds: int = 7, calls: int = 3000
) -> list[dict[str, Any]]:
    from benchmarks import ops
    from flowforge.core.logs import configure_logging
    from flowforge.db.engine import DB

    key = await ops.bench_api_key(loaded)
    ops._configure_flowforge()
    os.environ["LOG_FORMAT"] = "json"
    os.environ["LOG_LEVEL"] = "INFO"
    from flowforge.core.settings import get_settings

    get_settings.cache_clear()
    configure_logging()
    results = []
    stderr = sys.stderr
    sys.stderr = io.TextIOWrapper(open(os.devnull, "wb"))  # noqa: SIM115, ASYNC230 - access lines
    try:
        for name, (piece, baseline) in middleware_pieces().items():
            results.append(await measure(name, piece, baseline, calls=calls, rounds=rounds))
        await DB.start_connection_pool()
        try:
            for name, (piece, baseline) in (await database_pieces(loaded, key)).items():
                results.append(
                    await measure(name, piece, baseline, calls=max(200, calls // 10), rounds=rounds)
                )
        finally:
            await DB.close_connection_pool()
    finally:
        sys.stderr = stderr
    return results


def format_table(results: list[dict[str, Any]]) -> str:
    header = f"{'piece of the request path':<62} {'CPU us/request':>14} {'[min-max]':>16}"
    lines = [header, "-" * len(header)]
    for row in results:
        low, high = row["spread_us"]
        lines.append(
            f"{row['piece']:<62} {row['cpu_us_per_request']:>14.1f} {f'[{low:.1f}-{high:.1f}]':>16}"
        )
    lines.append(
        "CPU of this process per request (time.process_time), piece minus its baseline, "
        "median of interleaved rounds [lowest-highest]; serialisation rows are absolute"
    )
    return "\n".join(lines)


async def _main(argv: list[str]) -> int:
    """`python -m benchmarks.pieces [--runs N] [--rounds R] [--calls C] [--out F]`."""
    import argparse

    quick = dataset.Sizes.quick()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pieces")
    parser.add_argument("--runs", type=int, default=quick.runs, help="data set runs (100,000)")
    parser.add_argument("--workflows", type=int, default=quick.workflows)
    parser.add_argument("--users", type=int, default=quick.users)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per piece")
    parser.add_argument(
        "--calls", type=int, default=3000,
        help="calls per round of a middleware piece (a tenth, at least 200, for the database's)",
    )  # fmt: skip
    parser.add_argument("--out", default=os.environ.get("PIECES_OUT"), help="JSON output path")
    args = parser.parse_args(argv)
    sizes = dataset.Sizes(users=args.users, workflows=args.workflows, runs=args.runs)
    loaded = await dataset.prepare(sizes, fresh=False)
    results = await run_all(loaded, rounds=args.rounds, calls=args.calls)
    print(format_table(results))
    if args.out:
        with open(args.out, "w") as file:  # noqa: ASYNC230
            json.dump({"sizes": sizes.__dict__, "pieces": results}, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(sys.argv[1:])))
