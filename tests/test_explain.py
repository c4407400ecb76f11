"""The composite and partial indexes are the ones the planner picks, at a realistic volume.

A production-shaped data set (100 users, 1,000 workflows, 100,000 runs with a
realistic status skew, ~250,000 step logs, 100,000 outbox events of which 300
are unpublished) is generated inside PostgreSQL with ``INSERT ... SELECT
generate_series`` and analysed, then every known query pattern is EXPLAINed
(``FORMAT JSON``) and its plan tree walked: the intended index must be
scanned, and no Seq Scan may appear. The planner is never nudged
(no ``enable_seqscan = off``): it chooses from real statistics.

Loading takes a few seconds, so it happens once per module, in the
``dataset`` fixture, on the session's migrated test database. The tests here
deliberately do not use the per-test ``db`` fixture: its TRUNCATE would wipe
the data set between tests. ``dataset`` empties the tables itself before
loading and again when the module is done, so the tests that follow start
from the state they expect either way.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from flowforge.db.engine import DB
from flowforge.db.sql import api_keys as api_key_sql
from flowforge.db.sql import runs as run_sql
from flowforge.db.tables import RunStatus
from flowforge.domain import workflows
from tests import support

# Volumes: the brief's floor for the big tables, and the shape around them.
USERS = 100
WORKFLOWS = 1_000
RUNS = 100_000
OUTBOX = 100_000
UNPUBLISHED = 300
# The newest runs are still in flight; older ones are terminal.
IN_FLIGHT_WINDOW = 300

INDEX_SCANS = frozenset({"Index Scan", "Index Only Scan", "Bitmap Index Scan"})

# Run in one transaction on one connection, so setseed() makes the data
# deterministic. Foreign keys are correct by construction (every reference is
# drawn from its parent table, as test_the_data_set_respects_every_foreign_key
# checks), so a superuser skips their per-row triggers while loading, as
# pg_restore --disable-triggers does: that halves the load time. CHECK and
# UNIQUE constraints are enforced either way.
SKIP_FOREIGN_KEY_TRIGGERS = "SET LOCAL session_replication_role = replica"
LOAD = [
    "SET LOCAL jit = off",
    "SELECT setseed(0.4242)",
    # 100 users: a few admins, mostly developers, some viewers.
    f"""
    INSERT INTO users (email, display_name, role, created_at, updated_at)
    SELECT 'user' || g || '@example.com', 'User ' || g,
           CASE WHEN g <= 5 THEN 'admin' WHEN g <= 80 THEN 'developer' ELSE 'viewer' END,
           ts, ts
    FROM generate_series(1, {USERS}) AS g,
         LATERAL (SELECT now() - interval '500 days' + g * interval '1 day' AS ts) AS t
    """,
    # Keys are rotated: 30 per user over time, most of them revoked by now.
    """
    INSERT INTO api_keys (user_id, name, prefix, key_hash, scopes, expires_at, revoked_at,
                          last_used_at, created_at, updated_at)
    SELECT u.id, 'key ' || k, 'ff_' || substr(md5(u.email || k), 1, 12),
           encode(sha256(convert_to(u.email || ':' || k, 'UTF8')), 'hex'),
           CASE WHEN k % 3 = 0 THEN ARRAY['read', 'write']::varchar[]
                ELSE ARRAY['read']::varchar[] END,
           NULL,
           CASE WHEN k < 30 THEN u.created_at + k * interval '10 days' END,
           u.created_at + k * interval '10 days',
           u.created_at + (k - 1) * interval '10 days',
           u.created_at + (k - 1) * interval '10 days'
    FROM users AS u, generate_series(1, 30) AS k
    """,
    # Each key after a user's first was made with the one before it (rotation
    # through the API): chains of 30 for revocation to walk.
    """
    UPDATE api_keys AS k SET granted_by_key_id = p.id
    FROM api_keys AS p
    WHERE p.user_id = k.user_id AND k.name <> 'key 1'
      AND p.name = 'key ' || (substr(k.name, 5)::int - 1)
    """,
    # 1,000 workflows; owners skewed (a few power users own many), viewers own none.
    f"""
    INSERT INTO workflows (owner_id, name, description, trigger_type, trigger_config,
                           is_active, created_at, updated_at)
    SELECT o.ids[1 + floor(power(random(), 2) * cardinality(o.ids))::int],
           'workflow ' || g, 'Generated workflow number ' || g || ' for the EXPLAIN tests.',
           (ARRAY['manual', 'schedule', 'webhook', 'event'])[1 + g % 4],
           jsonb_build_object('n', g, 'cron', '*/5 * * * *', 'url', 'https://example.com/' || g),
           g % 10 <> 0,
           ts, ts
    FROM generate_series(1, {WORKFLOWS}) AS g,
         (SELECT array_agg(id ORDER BY created_at) AS ids FROM users WHERE role <> 'viewer') AS o,
         LATERAL (SELECT now() - interval '400 days' + g * interval '5 hours' AS ts) AS t
    """,
    # Version 1 of each workflow (issue 17): the workflows_first_version trigger
    # writes it, but the load may skip triggers (SKIP_FOREIGN_KEY_TRIGGERS); the
    # steps and runs are of version 1 (their column's default).
    """
    INSERT INTO workflow_versions (workflow_id, version, trigger_type, trigger_config,
                                   created_by_user_id, created_at)
    SELECT id, version, trigger_type, trigger_config, owner_id, created_at FROM workflows
    ON CONFLICT ON CONSTRAINT workflow_versions_workflow_version_key DO NOTHING
    """,
    # 1 to 4 steps per workflow.
    """
    INSERT INTO workflow_steps (workflow_id, position, name, action_type, config, retry_policy,
                                created_at, updated_at)
    SELECT w.id, p, 'step ' || p, (ARRAY['http', 'sql', 'email', 'script'])[1 + p % 4],
           jsonb_build_object('timeout', 30), jsonb_build_object('max_attempts', 2),
           w.created_at, w.created_at
    FROM (SELECT id, created_at, row_number() OVER (ORDER BY created_at) AS n FROM workflows) AS w,
         LATERAL generate_series(0, (w.n % 4)::int) AS p
    """,
    # Runs: one every ~4 minutes for ~280 days (g = 1 is the newest), inserted
    # oldest first so the heap is in time order, as in production. Popularity is
    # skewed (the busiest workflow has ~3% of all runs, the quietest a few dozen).
    # Status: the newest runs are pending/running; the rest ~94% completed,
    # 4% failed, 2% cancelled.
    f"""
    INSERT INTO workflow_runs (workflow_id, status, trigger_type, triggered_by_user_id, inputs,
                               outputs, error, idempotency_key, started_at, finished_at,
                               created_at, updated_at, next_attempt_at)
    SELECT workflow_id, status, trigger_type,
           CASE WHEN trigger_type = 'manual' THEN u.ids[1 + (g % cardinality(u.ids))] END,
           jsonb_build_object('n', g),
           CASE WHEN status = 'completed' THEN jsonb_build_object('ok', true) END,
           CASE WHEN status = 'failed' THEN 'step failed: upstream timed out' END,
           CASE WHEN trigger_type = 'webhook' THEN 'delivery-' || g END,
           CASE WHEN status IN ('running', 'completed', 'failed', 'awaiting_retry')
                     OR (status = 'cancelled' AND g % 2 = 0)
                THEN created_at + interval '2 seconds' END,
           CASE WHEN status IN ('completed', 'failed', 'cancelled')
                THEN created_at + interval '3 seconds' + duration END,
           created_at,
           created_at,
           CASE WHEN status = 'awaiting_retry' THEN created_at + interval '1 minute' END
    FROM (
        SELECT g, workflow_id, created_at, duration,
               (ARRAY['manual', 'schedule', 'webhook', 'event'])[1 + floor(r2 * 4)::int]
                   AS trigger_type,
               CASE WHEN g <= {IN_FLIGHT_WINDOW} AND r < 0.15 THEN 'pending'
                    WHEN g <= {IN_FLIGHT_WINDOW} AND r < 0.25 THEN 'awaiting_retry'
                    WHEN g <= {IN_FLIGHT_WINDOW} AND r < 0.55 THEN 'running'
                    WHEN g <= {IN_FLIGHT_WINDOW} THEN 'completed'
                    WHEN r < 0.04 THEN 'failed'
                    WHEN r < 0.06 THEN 'cancelled'
                    ELSE 'completed' END AS status
        FROM (
            SELECT g, w.ids[1 + floor(power(random(), 2) * cardinality(w.ids))::int]
                       AS workflow_id,
                   now() - g * interval '4 minutes' - random() * interval '4 minutes'
                       AS created_at,
                   random() * interval '5 minutes' AS duration,
                   random() AS r, random() AS r2
            FROM generate_series({RUNS}, 1, -1) AS g,
                 (SELECT array_agg(id ORDER BY created_at) AS ids FROM workflows) AS w
        ) AS drawn
    ) AS runs,
    (SELECT array_agg(id ORDER BY created_at) AS ids FROM users) AS u
    """,
    # One log per step of every started run (a running run has logged its first
    # step only); the failing step of a failed run was retried once.
    """
    INSERT INTO run_step_logs (run_id, run_created_at, step_id, step_position, step_name,
                               attempt, status, input, output, error, started_at, finished_at,
                               created_at, updated_at)
    SELECT r.id, r.created_at, s.id, s.position, s.name, 1, l.status,
           jsonb_build_object('position', s.position),
           CASE WHEN l.status = 'completed' THEN jsonb_build_object('ok', true) END,
           CASE WHEN l.status = 'failed' THEN 'upstream timed out' END,
           CASE WHEN l.status <> 'cancelled' THEN r.created_at + s.position * interval '1 second'
           END,
           CASE WHEN l.status <> 'running'
                THEN r.created_at + (s.position + 1) * interval '1 second' END,
           r.created_at, r.created_at
    FROM workflow_runs AS r
    JOIN workflow_steps AS s ON s.workflow_id = r.workflow_id
    JOIN (SELECT workflow_id, max(position) AS position FROM workflow_steps
          GROUP BY workflow_id) AS last ON last.workflow_id = r.workflow_id
    CROSS JOIN LATERAL (
        SELECT CASE WHEN r.status = 'failed' AND s.position = last.position THEN 'failed'
                    WHEN r.status = 'awaiting_retry' THEN 'failed'
                    WHEN r.status = 'failed' THEN 'completed'
                    ELSE r.status END AS status
    ) AS l
    WHERE r.status <> 'pending'
        AND NOT (r.status IN ('running', 'awaiting_retry') AND s.position > 0)
    """,
    """
    INSERT INTO run_step_logs (run_id, run_created_at, step_id, step_position, step_name,
                               attempt, status, input, error, started_at, finished_at,
                               created_at, updated_at)
    SELECT run_id, run_created_at, step_id, step_position, step_name, 2, 'failed', input, error,
           finished_at + interval '5 seconds', finished_at + interval '6 seconds',
           created_at, updated_at
    FROM run_step_logs WHERE status = 'failed'
    """,
    # The outbox keeps its published history; only the newest few hundred wait.
    f"""
    INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, published_at,
                        created_at, updated_at)
    SELECT 'workflow_run', gen_random_uuid(),
           (ARRAY['run.created', 'run.started', 'run.completed'])[1 + g % 3],
           jsonb_build_object('n', g),
           CASE WHEN g > {UNPUBLISHED}
                THEN ts + interval '1 second' + random() * interval '5 seconds' END,
           ts, ts
    FROM generate_series({OUTBOX}, 1, -1) AS g,
         LATERAL (SELECT now() - g * interval '5 minutes' AS ts) AS t
    """,
]


# The key with the most rows in `table`, and one with a median number of rows.
BUSIEST_AND_MEDIAN = """
(SELECT {key} FROM {table} GROUP BY {key} ORDER BY count(*) DESC, {key} LIMIT 1)
UNION ALL
(SELECT {key} FROM {table} GROUP BY {key} ORDER BY count(*), {key}
 OFFSET (SELECT count(DISTINCT {key}) / 2 FROM {table}) LIMIT 1)
"""


@dataclass(frozen=True)
class Dataset:
    load_seconds: float
    owner_id: uuid.UUID  # a user who owns a median number of workflows
    busy_workflow_id: uuid.UUID  # the workflow with the most runs
    quiet_workflow_id: uuid.UUID  # a workflow with a median number of runs
    cursor: tuple[Any, uuid.UUID]  # (created_at, id) of the busy workflow's 500th newest run
    run_id: uuid.UUID  # a failed run (so with retried step logs)
    api_key_prefix: str
    granting_key_id: uuid.UUID  # a key that granted 29 keys, transitively


async def scalar(sql: str, *args: Any) -> Any:
    return (await DB.fetch(sql, *args))[0][0]


@pytest.fixture(scope="module")
async def dataset(database_url: str) -> AsyncIterator[Dataset]:
    if DB.pool is None:
        await DB.start_connection_pool()
    truncate = f"TRUNCATE {', '.join(support.APP_TABLES)} CASCADE"
    await DB.fetch(truncate)
    superuser = await scalar("SELECT current_setting('is_superuser') = 'on'")
    started = time.perf_counter()
    async with DB.transaction():
        await DB.fetch("SET LOCAL statement_timeout = 0")  # a fixture's load, not a request
        for statement in ([SKIP_FOREIGN_KEY_TRIGGERS] if superuser else []) + LOAD:
            await DB.fetch(statement)
    # The history spans weeks before the partitions the migration prepared: as
    # the relay's housekeeping would, move it into partitions of its own.
    await support.partition_history()
    # Fresh statistics and visibility map, as autovacuum would leave them.
    await support.run_unhurried(f"VACUUM (ANALYZE) {', '.join(support.APP_TABLES)}")
    load_seconds = time.perf_counter() - started

    busy, quiet = await DB.fetch(
        BUSIEST_AND_MEDIAN.format(table="workflow_runs", key="workflow_id")
    )
    _, typical_owner = await DB.fetch(BUSIEST_AND_MEDIAN.format(table="workflows", key="owner_id"))
    cursor = (
        await DB.fetch(
            "SELECT created_at, id FROM workflow_runs WHERE workflow_id = $1 "
            "ORDER BY created_at DESC, id DESC OFFSET 499 LIMIT 1",
            busy[0],
        )
    )[0]
    yield Dataset(
        load_seconds=load_seconds,
        owner_id=typical_owner[0],
        busy_workflow_id=busy[0],
        quiet_workflow_id=quiet[0],
        cursor=(cursor["created_at"], cursor["id"]),
        run_id=await scalar(
            "SELECT id FROM workflow_runs WHERE status = 'failed' ORDER BY created_at DESC LIMIT 1"
        ),
        api_key_prefix=await scalar(
            "SELECT prefix FROM api_keys ORDER BY created_at DESC, prefix LIMIT 1 OFFSET 1234"
        ),
        granting_key_id=await scalar(
            "SELECT id FROM api_keys WHERE name = 'key 1' ORDER BY created_at LIMIT 1 OFFSET 50"
        ),
    )
    await DB.fetch(truncate)
    # The emptied past partitions go, so later tests' TRUNCATEs stay quick.
    await support.drop_empty_past_partitions()


# --- Plans ------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    node_type: str
    relation: str | None
    index: str | None


class Plan:
    """An ``EXPLAIN (FORMAT JSON)`` plan: its nodes, and a readable rendering."""

    def __init__(self, sql: str, root: dict[str, Any]) -> None:
        self.sql = sql
        self.root = root

    def _walk(self, node: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        node = self.root if node is None else node
        yield node
        for child in node.get("Plans", []):
            yield from self._walk(child)

    def raw_nodes(self) -> list[dict[str, Any]]:
        """Every node's JSON, outermost first (depth first)."""
        return list(self._walk())

    @property
    def nodes(self) -> list[Node]:
        return [
            Node(
                raw["Node Type"], *support.as_table(raw.get("Relation Name"), raw.get("Index Name"))
            )
            for raw in self.raw_nodes()
            # Partitions prepared ahead are empty; the planner knows they cost nothing.
            if not support.empty_partition_scan(raw)
        ]

    def node_types(self) -> set[str]:
        return {node.node_type for node in self.nodes}

    def index_scans(self) -> list[Node]:
        return [node for node in self.nodes if node.node_type in INDEX_SCANS]

    def summary(self) -> str:
        """One line: the nodes, outermost first, e.g. ``Limit > Index Scan[idx]``."""
        return " > ".join(
            f"{node.node_type}[{node.index}]" if node.index else node.node_type
            for node in self.nodes
        )

    def _render(self, raw: dict[str, Any], depth: int) -> Iterator[str]:
        pad = "  " * depth
        head = raw["Node Type"]
        if raw.get("Index Name"):
            head += f" using {raw['Index Name']}"
        if raw.get("Relation Name"):
            head += f" on {raw['Relation Name']}"
        cost = f"cost={raw['Startup Cost']}..{raw['Total Cost']} rows={raw['Plan Rows']}"
        yield f"{pad}-> {head}  ({cost})"
        for key in ("Index Cond", "Recheck Cond", "Filter", "Sort Key"):
            if key in raw:
                yield f"{pad}     {key}: {raw[key]}"
        for child in raw.get("Plans", []):
            yield from self._render(child, depth + 1)

    def __str__(self) -> str:
        return "\n".join([self.sql.strip(), "", *self._render(self.root, 0)])


async def explain(sql: str, *args: Any) -> Plan:
    rows = await DB.fetch(f"EXPLAIN (FORMAT JSON) {sql}", *args)
    document = rows[0][0]
    if isinstance(document, str):  # asyncpg returns json as text by default
        document = json.loads(document)
    return Plan(sql, document[0]["Plan"])


async def explain_piccolo(query: Any) -> Plan:
    """EXPLAIN the SQL a Piccolo query sends, with the same bound arguments."""
    sql, args = query.querystrings[0].compile_string("postgres")
    return await explain(sql, *args)


def assert_uses_index(
    plan: Plan, index: str | frozenset[str], table: str, *, sorted_by_index: bool = True
) -> None:
    """The plan reads `table` through `index` (or one of a set of acceptable
    indexes) only; never a Seq Scan; no Sort if `sorted_by_index` (the index
    order is the requested order)."""
    accepted = {index} if isinstance(index, str) else set(index)
    print(f"\n{index}: {plan.summary()}")  # visible with -s: the plans that were checked
    nodes = plan.nodes
    assert not [node for node in nodes if node.node_type == "Seq Scan"], (
        f"Seq Scan in the plan:\n{plan}"
    )
    assert any(node.index in accepted for node in plan.index_scans()), (
        f"{index} is not scanned:\n{plan}"
    )
    other = [node for node in plan.index_scans() if node.index not in accepted]
    assert not other, f"other indexes scanned besides {index}:\n{plan}"
    for node in nodes:
        if node.relation is not None:
            assert node.relation == table, f"unexpected relation {node.relation}:\n{plan}"
            assert node.node_type in {*INDEX_SCANS, "Bitmap Heap Scan"}, (
                f"{table} is not read through an index:\n{plan}"
            )
    if sorted_by_index:
        assert not plan.node_types() & {"Sort", "Incremental Sort"}, (
            f"a Sort node: the index should provide the order:\n{plan}"
        )


# The reaper's partial index over running runs (issue 4) also serves any
# query for the few runs in status 'running'; the planner may prefer it.
RUNNING_LEASE = frozenset({"workflow_runs_running_lease_idx"})


def status_index(status: RunStatus) -> str | frozenset[str]:
    composite = "workflow_runs_workflow_id_status_created_at_idx"
    return RUNNING_LEASE | {composite} if status is RunStatus.RUNNING else composite


# --- The data set -------------------------------------------------------------


async def test_the_data_set_has_production_volume_and_skew(dataset: Dataset) -> None:
    counts = {table: await scalar(f"SELECT count(*) FROM {table}") for table in support.APP_TABLES}
    print(f"\nloaded in {dataset.load_seconds:.1f}s: {counts}")
    assert counts["users"] == USERS
    assert counts["workflows"] == WORKFLOWS
    assert counts["workflow_runs"] >= 100_000
    assert counts["run_step_logs"] >= 200_000
    assert counts["outbox"] >= 100_000
    assert await scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL") == UNPUBLISHED
    assert await scalar("SELECT count(DISTINCT workflow_id) FROM workflow_runs") > 900
    assert await scalar("SELECT count(DISTINCT owner_id) FROM workflows") > 50

    shares = {
        row["status"]: row["share"]
        for row in await DB.fetch(
            "SELECT status, count(*)::float / sum(count(*)) OVER () AS share "
            "FROM workflow_runs GROUP BY status"
        )
    }
    assert set(shares) == set(RunStatus)
    assert shares[RunStatus.COMPLETED] > 0.9
    assert 0.01 < shares[RunStatus.FAILED] < 0.1
    assert 0.005 < shares[RunStatus.CANCELLED] < 0.1
    assert shares[RunStatus.RUNNING] < 0.005
    assert shares[RunStatus.PENDING] < 0.005


async def test_the_data_set_respects_every_foreign_key(dataset: Dataset) -> None:
    # The load skips the per-row foreign-key triggers; prove it needed none.
    foreign_keys = await DB.fetch(
        """
        SELECT c.conname, c.conrelid::regclass::text AS child, a.attname AS column,
               c.confrelid::regclass::text AS parent, pa.attname AS parent_column
        FROM pg_constraint AS c
        JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        JOIN pg_attribute AS pa ON pa.attrelid = c.confrelid AND pa.attnum = c.confkey[1]
        WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace
        """
    )
    assert len(foreign_keys) >= 7
    for fk in foreign_keys:
        orphans = await scalar(
            f"SELECT count(*) FROM {fk['child']} AS c WHERE c.{fk['column']} IS NOT NULL "
            f"AND NOT EXISTS (SELECT 1 FROM {fk['parent']} AS p "
            f"WHERE p.{fk['parent_column']} = c.{fk['column']})"
        )
        assert orphans == 0, f"{fk['conname']}: {orphans} orphaned rows"


# --- The production statements ----------------------------------------------
#
# Each test plans the statement FlowForge really sends: the raw SQL constant
# or builder a domain function runs, or the SQL the Piccolo query behind it
# compiles to. Where a query can match many rows, the index must also deliver
# the order (no Sort). Where it matches only a handful (a typical user's
# workflows, one run's step logs, a workflow's runs in a rare status), a
# bitmap scan of the same index plus a sort of those few rows costs the same
# as an ordered index scan, and the planner may pick either: those tests
# allow the Sort.


def assert_reads(
    plan: Plan,
    indexes: dict[str, str | frozenset[str]],
    *,
    sorted_by_index: bool = True,
    small: frozenset[str] = frozenset(),
) -> None:
    """Every table in the plan is read through one of its accepted indexes
    (``{table: index or indexes}``); never a Seq Scan (except of the `small`
    tables, which the planner may read whole); no Sort if `sorted_by_index`."""
    accepted = {
        table: {index} if isinstance(index, str) else set(index) for table, index in indexes.items()
    }
    every_index = set().union(*accepted.values())
    print(f"\n{sorted(every_index)}: {plan.summary()}")
    nodes = plan.nodes
    for node in nodes:
        if node.node_type == "Seq Scan" and node.relation in small:
            continue
        assert node.node_type != "Seq Scan", f"Seq Scan in the plan:\n{plan}"
        if node.relation is not None:
            assert node.relation in accepted, f"unexpected relation {node.relation}:\n{plan}"
            # ModifyTable: the UPDATE of rows found by the scans below it.
            assert node.node_type in {*INDEX_SCANS, "Bitmap Heap Scan", "ModifyTable"}, (
                f"{node.relation} is not read through an index:\n{plan}"
            )
            if node.index is not None:
                assert node.index in accepted[node.relation], f"{node.index} scanned:\n{plan}"
        elif node.node_type == "Bitmap Index Scan":
            assert node.index in every_index, f"{node.index} scanned:\n{plan}"
    read = {node.relation for node in nodes if node.relation is not None}
    assert read == set(accepted), f"expected to read {sorted(accepted)}:\n{plan}"
    if sorted_by_index:
        assert not plan.node_types() & {"Sort", "Incremental Sort"}, (
            f"a Sort node: the index should provide the order:\n{plan}"
        )


PAGE = 51  # the routes' default limit + 1


async def test_workflows_of_one_owner_newest_first(dataset: Dataset) -> None:
    query = workflows.list_workflows_query(
        owner_id=dataset.owner_id, is_active=None, limit=PAGE, position=None
    )
    plan = await explain_piccolo(query)
    assert_reads(
        plan,
        {
            "workflows": "workflows_owner_id_created_at_idx",
            "workflow_steps": "workflow_steps_workflow_version_position_key",
            # The name of each workflow's concurrency limit: a handful of rows.
            "concurrency_limits": "concurrency_limits_pkey",
        },
        sorted_by_index=False,
        small=frozenset({"concurrency_limits"}),
    )


def list_runs(
    workflow_id: uuid.UUID,
    *,
    status: RunStatus | None = None,
    cursor: tuple[Any, uuid.UUID] | None = None,
) -> tuple[str, list[Any]]:
    """runs.list_runs's SQL and arguments (the statement and parameter order it sends)."""
    args: list[Any] = [workflow_id, PAGE]
    if status is not None:
        args.append(status.value)
    if cursor is not None:
        args.extend(cursor)
    return run_sql.list_runs_sql(status is not None, cursor is not None, False), args


def runs_read_through(index: str | frozenset[str]) -> dict[str, str | frozenset[str]]:
    return {"workflows": "workflows_pkey", "workflow_runs": index}


async def test_runs_of_a_busy_workflow_newest_first(dataset: Dataset) -> None:
    runs_count = await scalar(
        "SELECT count(*) FROM workflow_runs WHERE workflow_id = $1", dataset.busy_workflow_id
    )
    assert runs_count > 2_000
    sql, args = list_runs(dataset.busy_workflow_id)
    plan = await explain(sql, *args)
    assert_reads(plan, runs_read_through("workflow_runs_workflow_id_created_at_idx"))


async def test_runs_of_a_typical_workflow_newest_first(dataset: Dataset) -> None:
    sql, args = list_runs(dataset.quiet_workflow_id)
    plan = await explain(sql, *args)
    assert_reads(
        plan,
        runs_read_through("workflow_runs_workflow_id_created_at_idx"),
        sorted_by_index=False,
    )


async def test_runs_of_one_workflow_next_page_by_keyset(dataset: Dataset) -> None:
    sql, args = list_runs(dataset.busy_workflow_id, cursor=dataset.cursor)
    plan = await explain(sql, *args)
    assert_reads(plan, runs_read_through("workflow_runs_workflow_id_created_at_idx"))
    # The cursor is part of the index condition, so a deep page does not read
    # (and throw away) every newer run first.
    scans = [raw for raw in plan.raw_nodes() if raw.get("Relation Name") == "workflow_runs"]
    assert any("ROW(created_at, id) < ROW(" in raw.get("Index Cond", "") for raw in scans), (
        f"the cursor is not in the Index Cond:\n{plan}"
    )


async def test_runs_of_one_workflow_in_one_status(dataset: Dataset) -> None:
    # The busy workflow's failed runs: over a hundred, the newest 50 straight from the index.
    failed = await scalar(
        "SELECT count(*) FROM workflow_runs WHERE workflow_id = $1 AND status = 'failed'",
        dataset.busy_workflow_id,
    )
    assert failed > 100
    sql, args = list_runs(dataset.busy_workflow_id, status=RunStatus.FAILED)
    plan = await explain(sql, *args)
    assert_reads(plan, runs_read_through("workflow_runs_workflow_id_status_created_at_idx"))


@pytest.mark.parametrize(
    ("which", "status"),
    [
        ("busy", RunStatus.RUNNING),
        ("busy", RunStatus.CANCELLED),
        ("typical", RunStatus.FAILED),
    ],
)
async def test_runs_of_one_workflow_in_a_rare_status(
    dataset: Dataset, which: str, status: RunStatus
) -> None:
    workflow_id = dataset.busy_workflow_id if which == "busy" else dataset.quiet_workflow_id
    sql, args = list_runs(workflow_id, status=status)
    plan = await explain(sql, *args)
    assert_reads(plan, runs_read_through(status_index(status)), sorted_by_index=False)


async def test_a_run_with_its_step_logs(dataset: Dataset) -> None:
    plan = await explain(run_sql.GET_RUN, dataset.run_id, None)
    assert_reads(
        plan,
        {
            # The run by id: its key, or the (id, created_at) key the step logs'
            # foreign key needs (issue 11), which also hands over created_at.
            "workflow_runs": frozenset({"workflow_runs_pkey", "workflow_runs_id_created_at_key"}),
            "workflows": "workflows_pkey",
            "run_step_logs": "run_step_logs_run_step_attempt_key",
        },
        sorted_by_index=False,
    )
    # The plan lists every step-log partition; run, it reads only the run's own
    # (pruned at execution by run_created_at = r.created_at).
    rows = await DB.fetch(f"EXPLAIN (ANALYZE, FORMAT JSON) {run_sql.GET_RUN}", dataset.run_id, None)
    document = rows[0][0]
    document = json.loads(document) if isinstance(document, str) else document
    executed = {
        raw["Relation Name"]
        for raw in Plan(run_sql.GET_RUN, document[0]["Plan"]).raw_nodes()
        if raw.get("Relation Name", "").startswith("run_step_logs_")
        and raw.get("Actual Loops", 0) > 0
    }
    assert len(executed) == 1, executed


async def test_revoking_a_key_finds_the_keys_it_granted_through_their_index(
    dataset: Dataset,
) -> None:
    # EXPLAIN without ANALYZE plans the data-modifying CTE without running it.
    plan = await explain(api_key_sql.REVOKE_GRANTED, dataset.granting_key_id, None)
    assert_reads(
        plan,
        {
            "api_keys": frozenset({"api_keys_pkey", "api_keys_granted_by_key_id_idx"}),
            "outbox": frozenset(),  # the events' INSERT
        },
        sorted_by_index=False,
    )
    assert "api_keys_granted_by_key_id_idx" in {node.index for node in plan.nodes}


async def test_authenticating_a_key(dataset: Dataset) -> None:
    # EXPLAIN without ANALYZE plans the data-modifying CTE without running it.
    plan = await explain(api_key_sql.AUTHENTICATE, dataset.api_key_prefix, "0" * 64)
    # The data set has 100 users (3 pages): reading them whole is the planner's
    # right call; the keys must be found through the prefix index.
    assert_reads(
        plan,
        {
            "api_keys": frozenset({"api_keys_prefix_key", "api_keys_pkey"}),
            "users": "users_pkey",
        },
        small=frozenset({"users"}),
    )


# --- The run queue (issue 18) ---------------------------------------------------------------


def relation_scans(plan: Plan, table: str) -> list[Node]:
    return [node for node in plan.nodes if node.relation == table]


async def test_the_claim_reads_due_runs_from_the_partial_due_index(dataset: Dataset) -> None:
    """Both claim statements: "due now" per workflow is a range of
    workflow_runs_due_idx (queued runs only, in claim order): no Seq Scan and no
    Sort of workflow_runs however many finished runs the table holds."""
    from flowforge.db.sql import queue as queue_sql

    for sql, args in (
        (queue_sql.CLAIM_WORKFLOWS, (None, "default", None)),
        (queue_sql.CLAIM_WORKFLOWS, ([dataset.busy_workflow_id], None, None)),
        (queue_sql.CLAIM_RUNS, ([dataset.busy_workflow_id, dataset.quiet_workflow_id], 10, "w")),
    ):
        plan = await explain(sql, *args)
        print(f"\nclaim: {plan.summary()}")
        scans = relation_scans(plan, "workflow_runs")
        assert not [n for n in scans if n.node_type == "Seq Scan"], f"Seq Scan:\n{plan}"
        assert not [n for n in scans if n.node_type == "Bitmap Heap Scan"], (
            f"not a probe per workflow (reads every queued run):\n{plan}"
        )
        used = {n.index for n in plan.nodes if n.index and n.index.startswith("workflow_runs")}
        assert "workflow_runs_due_idx" in used, f"due index unused:\n{plan}"
        # Each read of queued runs goes through the due index (the others count
        # running runs, or update the chosen ones by key).
        assert used <= {
            "workflow_runs_due_idx",
            "workflow_runs_pkey",
            *RUNNING_LEASE,
            "workflow_runs_workflow_id_status_created_at_idx",
        }, f"unexpected index:\n{plan}"


async def test_the_lateral_due_read_is_an_index_range_in_claim_order(dataset: Dataset) -> None:
    sql = f"""
        SELECT r.id FROM workflow_runs r
        WHERE r.workflow_id = $1 AND r.status IN ('pending', 'awaiting_retry')
          AND {"COALESCE(r.next_attempt_at, r.not_before, r.created_at)"} <= now()
        ORDER BY r.priority DESC, COALESCE(r.next_attempt_at, r.not_before, r.created_at), r.id
        LIMIT 10
    """
    assert_uses_index(
        await explain(sql, dataset.busy_workflow_id), "workflow_runs_due_idx", "workflow_runs"
    )
