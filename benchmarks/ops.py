"""The operations, each twice: through FlowForge's own code path, and the raw-asyncpg floor.

FlowForge side: exactly what an API request does below the HTTP layer: a
transaction from ``DB.transaction()`` (the pooled engine, SafeTransaction) and
the domain function the route calls. Floor side: a hand-written asyncpg
implementation doing the same work (same rows written, same events, same
checks, same data returned) on a plain asyncpg pool of the same size, as a
careful engineer would write it with no framework at all. The ratio between
the two is FlowForge's cost.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg

from benchmarks import dataset
from benchmarks.cold import COLD_OPERATIONS
from benchmarks.harness import Operation, compare

# Both sides get a pool of POOL_MAX connections (FlowForge's engine and the
# floor's plain asyncpg pool, min = max, so neither opens connections while
# timed), the app's default DB_POOL_MAX_SIZE: what one worker has in production.
# At concurrency 128 callers outnumber connections 6 to 1 and both sides wait
# in their pool's queue, as a loaded app worker does; 2 x 20 connections also
# leave most of a default max_connections (100) to the server's other users.
POOL_MAX = 20
CONCURRENCIES = (1, 32, 128)
LIFECYCLE_ATTEMPTS = 5


def _configure_flowforge() -> None:
    """Point FlowForge's engine at the benchmark database with a pool of POOL_MAX."""
    os.environ["DATABASE_URL"] = dataset.app_database_url()
    os.environ["DB_POOL_MIN_SIZE"] = str(POOL_MAX)
    os.environ["DB_POOL_MAX_SIZE"] = str(POOL_MAX)
    os.environ.setdefault("FLOWFORGE_ENV", "test")
    from flowforge.core.settings import get_settings
    from flowforge.db.engine import DB

    get_settings.cache_clear()
    DB.reconfigure()


class FloorConnection(asyncpg.Connection):
    """The floor's connections are not reset on release, as FlowForge's are not
    (flowforge.db.engine.PooledConnection): the floor runs only statements that
    leave no session state, so a careful engineer would skip asyncpg's reset
    round trip (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`)
    too. With it the floor paid one round trip per operation FlowForge does
    not, and ratios below 1 flattered FlowForge."""

    def get_reset_query(self) -> str:
        return ""


async def _floor_pool() -> asyncpg.Pool:
    from flowforge.core.settings import get_settings
    from flowforge.db.engine import asyncpg_config

    config = asyncpg_config(get_settings())
    return await asyncpg.create_pool(
        min_size=POOL_MAX, max_size=POOL_MAX, connection_class=FloorConnection, **config
    )


# -- floor SQL (hand-written, one round trip per step) ----------------------------------

FLOOR_TRIGGER = """
WITH run AS (
    INSERT INTO workflow_runs (workflow_id, workflow_version, trigger_type, triggered_by_user_id,
                               inputs)
    SELECT id, version, 'manual', $2, $3::jsonb FROM workflows WHERE id = $1 AND is_active
    RETURNING *
), event AS (
    INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
    SELECT 'workflow_run', id, 'run.created', jsonb_build_object(
        'run_id', id, 'workflow_id', workflow_id, 'status', status, 'previous_status', NULL,
        'error', NULL, 'started_at', NULL, 'finished_at', NULL, 'trigger_type', trigger_type,
        'triggered_by_user_id', triggered_by_user_id, 'inputs', inputs,
        'idempotency_key', idempotency_key, 'workflow_version', workflow_version)
    FROM run
)
SELECT * FROM run
"""

FLOOR_TRANSITION = """
WITH changed AS (
    UPDATE workflow_runs SET status = $2::text,
        started_at = CASE WHEN $2::text = 'running' THEN clock_timestamp() ELSE started_at END,
        finished_at = CASE WHEN $2::text = 'running' THEN NULL ELSE clock_timestamp() END
    WHERE id = $1 AND status = $3::text
    RETURNING *
), event AS (
    INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
    SELECT 'workflow_run', id, $4, jsonb_build_object(
        'run_id', id, 'workflow_id', workflow_id, 'status', status, 'previous_status', $3::text,
        'error', error, 'started_at', started_at, 'finished_at', finished_at,
        'outputs', outputs)
    FROM changed
)
SELECT * FROM changed
"""

FLOOR_CLOSE_ATTEMPTS = """
UPDATE run_step_logs SET status = 'cancelled', finished_at = clock_timestamp()
WHERE run_id = $1 AND run_created_at = $2 AND status IN ('pending', 'running')
"""

FLOOR_LOCK_RUN = """
UPDATE workflow_runs SET updated_at = now() WHERE id = $1 AND status = 'running'
RETURNING workflow_id, created_at, workflow_version
"""

FLOOR_APPEND = """
WITH step AS (
    SELECT id, position, name FROM workflow_steps
    WHERE workflow_id = $2 AND version = $7 AND position = $3
), logged AS (
    INSERT INTO run_step_logs (run_id, run_created_at, step_id, step_position, step_name,
                               attempt, status, input, output, started_at, finished_at)
    SELECT $1, $6::timestamptz, s.id, s.position, s.name,
        coalesce((SELECT max(attempt) FROM run_step_logs
                  WHERE run_id = $1 AND run_created_at = $6 AND step_position = $3), 0) + 1,
        'completed', $4::jsonb, $5::jsonb, now(), now()
    FROM step s
    RETURNING *
), event AS (
    INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
    SELECT 'workflow_run', run_id, 'run.step_logged', jsonb_build_object(
        'run_id', run_id, 'workflow_id', $2::uuid, 'step_log_id', id, 'step_id', step_id,
        'step_position', step_position, 'step_name', step_name, 'attempt', attempt,
        'status', status, 'error', error, 'started_at', started_at, 'finished_at', finished_at)
    FROM logged
)
SELECT * FROM logged
"""

# The workflow must exist (a 404 otherwise): joined, so one round trip answers both.
FLOOR_LIST = """
SELECT w.id AS visible, r.*
FROM workflows w LEFT JOIN LATERAL (
    SELECT * FROM workflow_runs r WHERE r.workflow_id = w.id AND r.status = $2
    ORDER BY r.created_at DESC, r.id DESC LIMIT $3
) r ON true
WHERE w.id = $1
"""

FLOOR_GET_RUN = """
SELECT r.*, ARRAY(SELECT ROW(l.*) FROM run_step_logs l
                  WHERE l.run_id = r.id AND l.run_created_at = r.created_at
                  ORDER BY l.step_position, l.attempt) AS step_logs
FROM workflow_runs r WHERE r.id = $1
"""

# One round trip: the key and its user, plus the throttled last_used_at touch.
FLOOR_AUTH = """
WITH touched AS (
    UPDATE api_keys SET last_used_at = now()
    WHERE id = (SELECT id FROM api_keys WHERE prefix = $1 AND key_hash = $2
                  AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
                  AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds')
                FOR UPDATE SKIP LOCKED)
)
SELECT k.id, k.user_id, k.key_hash, k.scopes, k.revoked_at, k.expires_at, u.role, u.is_active
FROM api_keys k JOIN users u ON u.id = k.user_id
WHERE k.prefix = $1
"""

# The same ordering rule as the relay: only an aggregate's oldest unpublished
# event (its head) is claimable; the claimer then takes the head's followers.
FLOOR_CLAIM_HEADS = """
SELECT id, seq, aggregate_type, aggregate_id, event_type, payload::text AS payload, created_at
FROM outbox o
WHERE published_at IS NULL AND dead_lettered_at IS NULL AND next_attempt_at <= now()
  AND seq = (SELECT seq FROM outbox older
             WHERE older.aggregate_type = o.aggregate_type
               AND older.aggregate_id = o.aggregate_id AND older.published_at IS NULL
             ORDER BY seq LIMIT 1)
ORDER BY seq
LIMIT $1
FOR UPDATE OF o SKIP LOCKED
"""
FLOOR_CLAIM_FOLLOWERS = """
SELECT f.id, f.seq, f.aggregate_type, f.aggregate_id, f.event_type, f.payload::text AS payload,
       f.created_at
FROM unnest($1::text[], $2::uuid[], $3::bigint[]) AS h(aggregate_type, aggregate_id, seq)
CROSS JOIN LATERAL (
    SELECT * FROM outbox o
    WHERE o.aggregate_type = h.aggregate_type AND o.aggregate_id = h.aggregate_id
      AND o.seq > h.seq AND o.published_at IS NULL
    ORDER BY o.seq LIMIT $4
) f
ORDER BY f.seq
LIMIT $4
FOR UPDATE OF f
"""
FLOOR_MARK = """
UPDATE outbox SET published_at = clock_timestamp(), attempts = attempts + 1
WHERE id = ANY($1::uuid[])
"""


def _decode_run(row: asyncpg.Record) -> dict[str, Any]:
    run = dict(row)
    run["inputs"] = json.loads(run["inputs"])
    if run["outputs"] is not None:
        run["outputs"] = json.loads(run["outputs"])
    return run


class Context:
    """Shared state of one benchmark session: pools, data handles, keys."""

    def __init__(self, loaded: dataset.Loaded, floor_pool: asyncpg.Pool) -> None:
        self.loaded = loaded
        self.pool = floor_pool
        self.admin_id = loaded.user_ids[0]
        self.keys: list[str] = []
        # The workflow claim_lifecycle claims from (the data set's last one).
        self.queue_workflow = loaded.workflow_ids[-1]

    def workflow(self, n: int) -> uuid.UUID:
        return self.loaded.workflow_ids[n % len(self.loaded.workflow_ids)]


# -- the operations ----------------------------------------------------------------------


def trigger_run(ctx: Context) -> tuple[Operation, Operation]:
    from flowforge.db.engine import DB
    from flowforge.domain import runs

    async def flowforge(n: int) -> Any:
        async with DB.transaction():
            return await runs.trigger_run(
                ctx.workflow(n), inputs={"n": n}, triggered_by=ctx.admin_id
            )

    async def floor(n: int) -> Any:
        async with ctx.pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                FLOOR_TRIGGER, ctx.workflow(n), ctx.admin_id, json.dumps({"n": n})
            )
            return _decode_run(row)

    return flowforge, floor


def run_lifecycle(ctx: Context) -> tuple[Operation, Operation]:
    """Trigger, start, 5 step attempts, complete: 8 transactions, as 8 API calls would be."""
    from flowforge.db.engine import DB
    from flowforge.db.tables import RunStatus
    from flowforge.domain import runs

    steps = ctx.loaded.sizes.steps_per_workflow

    async def flowforge(n: int) -> Any:
        workflow = ctx.workflow(n)
        async with DB.transaction():
            run, _ = await runs.trigger_run(workflow, inputs={"n": n}, triggered_by=ctx.admin_id)
        async with DB.transaction():
            await runs.transition_run(run["id"], "start")
        for attempt in range(LIFECYCLE_ATTEMPTS):
            async with DB.transaction():
                await runs.append_step_log(
                    run["id"], step_position=attempt % steps, status=RunStatus.COMPLETED,
                    input={"a": attempt}, output={"ok": True},
                )  # fmt: skip
        async with DB.transaction():
            return await runs.transition_run(run["id"], "complete", outputs={"ok": True})

    async def floor(n: int) -> Any:
        workflow = ctx.workflow(n)
        pool = ctx.pool
        async with pool.acquire() as connection, connection.transaction():
            run = _decode_run(
                await connection.fetchrow(
                    FLOOR_TRIGGER, workflow, ctx.admin_id, json.dumps({"n": n})
                )
            )
        async with pool.acquire() as connection, connection.transaction():
            await connection.fetchrow(
                FLOOR_TRANSITION, run["id"], "running", "pending", "run.started"
            )
        for attempt in range(LIFECYCLE_ATTEMPTS):
            async with pool.acquire() as connection, connection.transaction():
                workflow_id, run_created_at, version = await connection.fetchrow(
                    FLOOR_LOCK_RUN, run["id"]
                )
                log = dict(await connection.fetchrow(
                    FLOOR_APPEND, run["id"], workflow_id, attempt % steps,
                    json.dumps({"a": attempt}), json.dumps({"ok": True}), run_created_at, version,
                ))  # fmt: skip
                log["input"] = json.loads(log["input"])
                log["output"] = json.loads(log["output"])
        async with pool.acquire() as connection, connection.transaction():
            done = _decode_run(
                await connection.fetchrow(
                    FLOOR_TRANSITION, run["id"], "completed", "running", "run.completed"
                )
            )
            # An ended run closes its open attempts (after the lock, new snapshot).
            await connection.execute(FLOOR_CLOSE_ATTEMPTS, run["id"], done["created_at"])
            return done

    return flowforge, floor


def list_runs_page(ctx: Context) -> tuple[Operation, Operation]:
    from flowforge.db.engine import DB
    from flowforge.db.tables import RunStatus
    from flowforge.domain import runs

    busy = ctx.loaded.busy_workflow_ids

    async def flowforge(n: int) -> Any:
        async with DB.transaction():
            return await runs.list_runs(busy[n % len(busy)], status=RunStatus.COMPLETED, limit=50)

    async def floor(n: int) -> Any:
        async with ctx.pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(FLOOR_LIST, busy[n % len(busy)], "completed", 51)
        if not rows:
            raise LookupError("workflow not found")
        runs = [_decode_run(row) for row in rows if row["id"] is not None]
        return runs[:50], len(runs) > 50

    return flowforge, floor


def get_run_with_logs(ctx: Context) -> tuple[Operation, Operation]:
    from flowforge.db.engine import DB
    from flowforge.domain import runs

    sample = ctx.loaded.sample_run_ids

    async def flowforge(n: int) -> Any:
        async with DB.transaction():
            return await runs.get_run(sample[n % len(sample)])

    async def floor(n: int) -> Any:
        async with ctx.pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(FLOOR_GET_RUN, sample[n % len(sample)])
            run = _decode_run(row)
            logs = []
            for values in row["step_logs"]:
                log = dict(zip(LOG_FIELDS, values, strict=True))
                for key in ("input", "output"):
                    if log[key] is not None:
                        log[key] = json.loads(log[key])
                logs.append(log)
            run["step_logs"] = logs
            return run

    return flowforge, floor


def get_run_history(ctx: Context) -> tuple[Operation, Operation]:
    """A page of a run's history, as `GET /api/v1/runs/{id}/history` reads it (an
    admin's: no owner filter). The sample runs have a history (dataset.HISTORY_OF_SAMPLE).
    The floor runs the very statement FlowForge sends
    (flowforge.db.sql.history.RUN_HISTORY_PAGE) and shapes the same page: the
    entries as dicts without the visibility column, the next page's cursor."""
    from flowforge.db.engine import DB
    from flowforge.db.sql.history import RUN_HISTORY_PAGE
    from flowforge.domain import history
    from flowforge.domain.pagination import DEFAULT_LIMIT, encode_cursor

    sample = ctx.loaded.sample_run_ids

    async def flowforge(n: int) -> Any:
        async with DB.transaction():
            return await history.list_run_history(sample[n % len(sample)], limit=DEFAULT_LIMIT)

    async def floor(n: int) -> Any:
        async with ctx.pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(
                RUN_HISTORY_PAGE, sample[n % len(sample)], DEFAULT_LIMIT + 1, None, None, None
            )
        if not rows:
            raise LookupError("run not found")
        entries = []
        for row in rows:
            if row["id"] is not None:
                entry = dict(row)
                del entry["visible_run_id"]
                entries.append(entry)
        if len(entries) > DEFAULT_LIMIT:
            entries = entries[:DEFAULT_LIMIT]
            return entries, encode_cursor(entries[-1]["recorded_at"], entries[-1]["id"])
        return entries, None

    return flowforge, floor


LOG_FIELDS = (
    "id", "created_at", "updated_at", "run_id", "step_id", "step_position", "step_name",
    "attempt", "status", "input", "output", "error", "started_at", "finished_at", "run_created_at",
)  # fmt: skip


def authenticate_key(ctx: Context) -> tuple[Operation, Operation]:
    from flowforge.db.engine import DB
    from flowforge.domain import api_keys

    keys = ctx.keys

    async def flowforge(n: int) -> Any:
        async with DB.transaction():
            return await api_keys.authenticate(keys[n % len(keys)])

    async def floor(n: int) -> Any:
        key = keys[n % len(keys)]
        prefix = key.split("_")[1]
        presented = hashlib.sha256(key.encode()).hexdigest()
        async with ctx.pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(FLOOR_AUTH, prefix, presented)
        if row is None or not hmac.compare_digest(presented, row["key_hash"]):
            raise RuntimeError("unknown key")
        if row["revoked_at"] is not None or not row["is_active"]:
            raise RuntimeError("rejected key")
        return row["user_id"], row["role"], frozenset(row["scopes"])

    return flowforge, floor


DRAIN_BATCH = 100


def drain_outbox(ctx: Context) -> tuple[Operation, Operation]:
    """Claim a batch of 100 unpublished events and mark them published (no broker)."""
    from flowforge.db.engine import DB
    from flowforge.relay import store

    async def flowforge(n: int) -> Any:
        async with DB.transaction():
            events = await store.claim_batch(DRAIN_BATCH)
            await store.mark_published([event.id for event in events])
            return len(events)

    async def floor(n: int) -> Any:
        async with ctx.pool.acquire() as connection, connection.transaction():
            rows = list(await connection.fetch(FLOOR_CLAIM_HEADS, DRAIN_BATCH))
            if rows and len(rows) < DRAIN_BATCH:
                rows += await connection.fetch(
                    FLOOR_CLAIM_FOLLOWERS,
                    [row["aggregate_type"] for row in rows],
                    [row["aggregate_id"] for row in rows],
                    [row["seq"] for row in rows],
                    DRAIN_BATCH - len(rows),
                )
            await connection.execute(FLOOR_MARK, [row["id"] for row in rows])
            return len(rows)

    return flowforge, floor


def claim_lifecycle(ctx: Context) -> tuple[Operation, Operation]:
    """A worker's hot path (issue 18): claim one due run, then complete it.

    Two transactions on each side, as a worker does. The floor runs the very
    statements FlowForge sends (flowforge/db/sql/queue.py and runs.py) on a
    plain asyncpg connection: the ratio is the domain and engine's cost, not a
    different query. Claims are confined to the queue workflow that
    _fill_queue stocks.
    """
    from flowforge.db.engine import DB
    from flowforge.db.sql import queue as queue_sql
    from flowforge.db.sql import runs as run_sql
    from flowforge.domain import queue, runs

    workflow = [ctx.queue_workflow]

    async def flowforge(n: int) -> Any:
        async with DB.transaction():
            claimed = await queue.claim_runs("bench", workflow_ids=workflow)
        for run in claimed:
            async with DB.transaction():
                await runs.transition_run(run["id"], "complete", outputs={"n": n})
        return claimed

    async def floor(n: int) -> Any:
        async with ctx.pool.acquire() as connection:
            async with connection.transaction():
                ids = [
                    row["id"]
                    for row in await connection.fetch(
                        queue_sql.CLAIM_WORKFLOWS, workflow, None, None
                    )
                ]
                rows = await connection.fetch(queue_sql.CLAIM_RUNS, ids, 1, "bench") if ids else []
            claimed = [_decode_run(row) for row in rows]
            for run in claimed:
                async with connection.transaction():
                    done = await connection.fetchrow(
                        run_sql.TRANSITION_RUN, run["id"], "completed", ["running"], None,
                        json.dumps({"n": n}), None, "run.completed", False,
                    )  # fmt: skip
                    await connection.execute(
                        run_sql.CLOSE_ATTEMPTS, run["id"], done["created_at"], "run completed",
                        done["workflow_id"],
                    )  # fmt: skip
            return claimed

    return flowforge, floor


async def _fill_queue(ctx: Context, runs: int) -> None:
    """`runs` pending runs in the queue workflow, so neither side's claims come back empty."""
    async with ctx.pool.acquire() as connection:
        await connection.execute(
            "INSERT INTO workflow_runs (workflow_id) SELECT $1::uuid FROM generate_series(1, $2)",
            ctx.queue_workflow,
            runs,
        )
        await connection.execute("VACUUM ANALYZE workflow_runs")


OPERATIONS: dict[str, Callable[[Context], tuple[Operation, Operation]]] = {
    "trigger_run": trigger_run,
    "run_lifecycle": run_lifecycle,
    "list_runs_page": list_runs_page,
    "get_run_with_logs": get_run_with_logs,
    "get_run_history": get_run_history,
    "authenticate_key": authenticate_key,
    "drain_outbox": drain_outbox,
    "claim_lifecycle": claim_lifecycle,
    # Cold paths on the query builder vs their previous raw SQL (benchmarks/cold.py).
    **COLD_OPERATIONS,
}
# Target cost ratio: hot paths vs the raw-asyncpg floor; cold paths vs their previous cost.
HOT_TARGET = 1.25
COLD_TARGET = 1.5


def target(name: str) -> float:
    return COLD_TARGET if name in COLD_OPERATIONS else HOT_TARGET


def concurrencies(name: str) -> tuple[int, ...]:
    """128 callers only for the request path: an app worker under load serves that
    many at once, while the outbox is drained by a few relays (claims queue on
    each other's row locks: at 128 they wait past the pool's acquire timeout)
    and the cold paths are called now and then."""
    if name == "drain_outbox" or name in COLD_OPERATIONS:
        return tuple(c for c in CONCURRENCIES if c <= 32)
    return CONCURRENCIES


UNITS = {
    "drain_outbox": "events/s",
    "run_lifecycle": "lifecycles/s",
    "claim_lifecycle": "claims/s",
}
ITEMS = {"drain_outbox": DRAIN_BATCH}
# Fewer repetitions for the heavy operations, so a round takes seconds, not minutes.
SCALE = {
    "run_lifecycle": 0.25,
    "drain_outbox": 0.25,
    "claim_lifecycle": 0.25,
    # A day of expired history counted per operation (~1/90 of the data set).
    "cold:count_expired_events": 0.25,
}


async def _create_keys(ctx: Context, count: int) -> None:
    from flowforge.db.engine import DB
    from flowforge.db.tables import Scope
    from flowforge.domain import api_keys

    async with DB.transaction():
        for user_id in itertools.islice(itertools.cycle(ctx.loaded.user_ids), count):
            _, key = await api_keys.create_api_key(
                user_id, name="bench", scopes=[Scope.READ, Scope.WRITE]
            )
            ctx.keys.append(key)


async def bench_api_key(loaded: dataset.Loaded) -> str:
    """A read+write API key of the data set's admin, for the HTTP runs."""
    from flowforge.db.engine import DB
    from flowforge.db.tables import Scope
    from flowforge.domain import api_keys

    _configure_flowforge()
    await DB.start_connection_pool()
    try:
        async with DB.transaction():
            _, key = await api_keys.create_api_key(
                loaded.user_ids[0], name="bench-http", scopes=[Scope.READ, Scope.WRITE, Scope.ADMIN]
            )
    finally:
        await DB.close_connection_pool()
    return key


async def _fill_outbox(ctx: Context, events: int) -> None:
    """Make the unpublished outbox `events` uniform events, so both sides drain the same work.

    Earlier operations leave events behind (run.created, whole lifecycles of one
    run): whichever side drained those first would get a different mix of
    heads and followers than the other. They are marked published first.
    """
    async with ctx.pool.acquire() as connection:
        await connection.execute(
            "UPDATE outbox SET published_at = now() WHERE published_at IS NULL"
        )
        await connection.execute(
            """
            INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
            SELECT 'bench', gen_random_uuid(), 'bench.drain', jsonb_build_object('i', i)
            FROM generate_series(1, $1) AS i
            """,
            events,
        )
        await connection.execute("VACUUM ANALYZE outbox")


async def run_all(
    loaded: dataset.Loaded,
    *,
    rounds: int,
    operations: int,
    only: set[str] | None,
    round_seconds: float = 0.0,
) -> list[dict[str, Any]]:
    from flowforge.db.engine import DB

    _configure_flowforge()
    await DB.start_connection_pool()
    floor_pool = await _floor_pool()
    ctx = Context(loaded, floor_pool)
    summaries: list[dict[str, Any]] = []
    try:
        await _create_keys(ctx, 200)
        for name, build in OPERATIONS.items():
            if only and name not in only:
                continue
            flowforge, floor = build(ctx)
            scaled = max(10, int(operations * SCALE.get(name, 1.0)))
            for concurrency in concurrencies(name):
                # At least two calls per caller: fewer calls than callers would
                # measure a lower concurrency than the one reported.
                count = max(scaled, 2 * concurrency)
                if name == "drain_outbox":
                    await _fill_outbox(ctx, DRAIN_BATCH * (count * (rounds + 1) * 2 + 50))
                if name == "claim_lifecycle":
                    await _fill_queue(ctx, count * (rounds + 1) * 2 + 50)
                comparison = await compare(
                    name, flowforge, floor, concurrency=concurrency, operations=count,
                    rounds=rounds, unit=UNITS.get(name, "ops/s"),
                    per_operation_items=ITEMS.get(name, 1),
                    warmup=min(20, count),
                    # The drain's outbox (the claims' queue) is filled for `count` a round.
                    round_seconds=0.0 if name in ("drain_outbox", "claim_lifecycle") else round_seconds,
                )  # fmt: skip
                summary = comparison.summary()
                summary["target"] = target(name)
                summary["baseline"] = "previous raw SQL" if name in COLD_OPERATIONS else "floor"
                summaries.append(summary)
                low, high = summary["ratio_spread"]
                print(
                    f"  {name:<26} c={concurrency:<3} ratio {summary['cost_ratio']:.2f} "
                    f"[rounds {low:.2f}-{high:.2f}; target <= {summary['target']}] "
                    f"(FlowForge {summary['flowforge']['throughput']:.0f} vs floor "
                    f"{summary['floor']['throughput']:.0f} {summary['unit']})",
                    flush=True,
                )
    finally:
        await floor_pool.close()
        await DB.close_connection_pool()
    return summaries
