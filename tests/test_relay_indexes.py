"""The relay's, reaper's and pruner's queries use their indexes at a realistic volume.

200k outbox rows (190k published over 30 days, 10k waiting across 2,000
aggregates, 50 dead letters) and 100k runs (98k finished over 120 days, 1,500
running, 500 pending) with 196k step logs, generated in SQL and ANALYZEd.
Each statement is the exact SQL the code runs (imported, not copied), with
realistic parameters; its plan must use the named index and never scan the
big tables sequentially.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from flowforge.db.engine import DB
from flowforge.db.sql import outbox as outbox_sql
from flowforge.db.sql import relay as relay_sql
from flowforge.db.sql.reaper import REAP
from flowforge.db.sql.retention import PRUNE_OUTBOX, PRUNE_RUNS
from flowforge.jobs.retention import expired_events_count
from flowforge.outbox import status
from flowforge.relay import store
from tests import support

BIG_TABLES = {"outbox", "workflow_runs", "run_step_logs"}
WEEK = 7 * 86400.0


@pytest.fixture(scope="module")
async def volume(database_url: str) -> AsyncIterator[None]:
    if DB.pool is None:
        await DB.start_connection_pool()
    await DB.fetch(f"TRUNCATE {', '.join(support.APP_TABLES)} CASCADE")
    await support.run_unhurried(*GENERATE)
    await support.partition_history()
    await support.run_unhurried(
        *(f"VACUUM ANALYZE {table}" for table in BIG_TABLES | {"workflows", "users"})
    )
    yield
    await DB.fetch(f"TRUNCATE {', '.join(support.APP_TABLES)} CASCADE")
    await support.drop_empty_past_partitions()


GENERATE = [
    """
    INSERT INTO users (email, display_name)
    SELECT 'user' || u || '@example.com', 'User ' || u FROM generate_series(1, 10) AS u
    """,
    """
    INSERT INTO workflows (owner_id, name)
    SELECT (SELECT id FROM users ORDER BY email OFFSET (w % 10) LIMIT 1), 'wf ' || w
    FROM generate_series(1, 100) AS w
    """,
    # 98k finished runs over the last 120 days.
    """
    INSERT INTO workflow_runs (workflow_id, status, started_at, finished_at, error)
    SELECT w.ids[1 + r % 100],
        (ARRAY['completed', 'completed', 'completed', 'failed', 'cancelled'])[1 + r % 5],
        now() - make_interval(secs => r * 105.8) - interval '1 minute',
        now() - make_interval(secs => r * 105.8),
        CASE WHEN r % 5 = 3 THEN 'boom' END
    FROM generate_series(1, 98000) AS r,
        (SELECT array_agg(id) AS ids FROM workflows) AS w
    """,
    # 1,500 running (some with heartbeats), 500 pending.
    """
    INSERT INTO workflow_runs (workflow_id, status, started_at, heartbeat_at)
    SELECT w.ids[1 + r % 100], 'running', now() - make_interval(mins => r * 2),
        CASE WHEN r % 2 = 0 THEN now() - make_interval(mins => r) END
    FROM generate_series(1, 1500) AS r, (SELECT array_agg(id) AS ids FROM workflows) AS w
    """,
    """
    INSERT INTO workflow_runs (workflow_id)
    SELECT w.ids[1 + r % 100] FROM generate_series(1, 500) AS r,
        (SELECT array_agg(id) AS ids FROM workflows) AS w
    """,
    """
    INSERT INTO run_step_logs (run_id, run_created_at, step_position, step_name, status,
                               started_at, finished_at)
    SELECT r.id, r.created_at, p, 'step ' || p, 'completed', r.started_at, r.started_at
    FROM workflow_runs AS r, generate_series(0, 1) AS p
    WHERE r.status IN ('completed', 'failed', 'cancelled')
    """,
    # 190k published events over 30 days.
    """
    INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, attempts, published_at)
    SELECT 'workflow_run', gen_random_uuid(), 'run.completed', jsonb_build_object('n', n), 1,
        now() - make_interval(secs => n * 13.6)
    FROM generate_series(1, 190000) AS n
    """,
    # 9,950 waiting (5 per aggregate over 1,990 aggregates, interleaved), 50 dead letters
    # with one held event each.
    """
    INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
    SELECT 'workflow_run', md5('agg' || a)::uuid, 'run.step_logged', jsonb_build_object('n', n)
    FROM generate_series(1, 5) AS n, generate_series(1, 1990) AS a
    ORDER BY n, a
    """,
    """
    INSERT INTO outbox (aggregate_type, aggregate_id, event_type, attempts, last_error,
        dead_lettered_at)
    SELECT 'workflow', md5('dead' || d)::uuid, 'workflow.created', 10, 'broker said no', now()
    FROM generate_series(1, 50) AS d
    """,
    """
    INSERT INTO outbox (aggregate_type, aggregate_id, event_type)
    SELECT 'workflow', md5('dead' || d)::uuid, 'workflow.updated' FROM generate_series(1, 50) AS d
    """,
]


async def plan(sql: str, *args: Any) -> dict[str, Any]:
    rows = await DB.fetch(f"EXPLAIN (FORMAT JSON) {sql}", *args)
    value = rows[0][0]
    document = json.loads(value) if isinstance(value, str) else value
    return document[0]["Plan"]  # type: ignore[no-any-return]


def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node, a time partition and its indexes named as their table's;
    scans of empty partitions (prepared ahead) are left out."""
    if support.empty_partition_scan(node):
        return
    if "Relation Name" in node or "Index Name" in node:
        relation, index = support.as_table(node.get("Relation Name"), node.get("Index Name"))
        node = {**node, "Relation Name": relation, "Index Name": index}
        node = {key: value for key, value in node.items() if value is not None}
    yield node
    for child in node.get("Plans", []):
        yield from nodes(child)


def assert_uses(tree: dict[str, Any], *indexes: str) -> None:
    used = {node["Index Name"] for node in nodes(tree) if "Index Name" in node}
    assert set(indexes) <= used, f"expected {indexes}, plan used {used}"
    seq_scans = {
        node["Relation Name"]
        for node in nodes(tree)
        if node["Node Type"] == "Seq Scan" and node.get("Relation Name") in BIG_TABLES
    }
    assert not seq_scans, f"sequential scan of {seq_scans}"


pytestmark = pytest.mark.usefixtures("volume")


async def test_volume_is_realistic() -> None:
    counts = await DB.fetch(
        "SELECT (SELECT count(*) FROM outbox) AS o, (SELECT count(*) FROM workflow_runs) AS r, "
        "(SELECT count(*) FROM run_step_logs) AS l"
    )
    assert tuple(counts[0]) == (200_050, 100_000, 196_000)


async def test_claiming_heads_walks_the_claim_index_in_seq_order() -> None:
    tree = await plan(relay_sql.CLAIM_HEADS, 500)
    assert_uses(tree, "outbox_claim_idx", "outbox_aggregate_unpublished_idx")


async def test_claiming_followers_uses_the_per_aggregate_index() -> None:
    heads = await DB.fetch(
        "SELECT aggregate_type, aggregate_id, seq FROM outbox WHERE published_at IS NULL "
        "AND dead_lettered_at IS NULL ORDER BY seq LIMIT 100"
    )
    tree = await plan(
        relay_sql.CLAIM_FOLLOWERS,
        [row["aggregate_type"] for row in heads],
        [row["aggregate_id"] for row in heads],
        [row["seq"] for row in heads],
        400,
    )
    assert_uses(tree, "outbox_aggregate_unpublished_idx")


async def test_marking_uses_the_primary_key() -> None:
    some = [row["id"] for row in await DB.fetch("SELECT id FROM outbox LIMIT 500")]
    # Partitioned by day (issue 11): the planner may probe each partition's small
    # unpublished partial index with the ids instead of its key; either way no
    # partition is read sequentially.
    marked = {"outbox_pkey", "outbox_aggregate_unpublished_idx", "outbox_claim_idx"}
    for tree in (
        await plan(relay_sql.MARK_PUBLISHED, some),
        await plan(relay_sql.MARK_FAILED, some[:10], ["x"] * 10, 1.0, 600.0, 10),
    ):
        assert_uses(tree)
        assert {node["Index Name"] for node in nodes(tree) if "Index Name" in node} & marked


async def test_the_idle_probe_and_readyz_details_are_index_probes() -> None:
    sql, args = store.due_events_exist().querystrings[0].compile_string("postgres")
    assert_uses(await plan(sql, *args), "outbox_claim_idx")
    assert_uses(await plan(outbox_sql.HEALTH), "outbox_claim_idx", "outbox_dead_lettered_idx")
    sql, args = status.dead_letters_query(20).querystrings[0].compile_string("postgres")
    assert_uses(await plan(sql, *args), "outbox_dead_lettered_idx")


async def test_pruning_events_takes_the_oldest_published_through_its_index() -> None:
    assert_uses(await plan(PRUNE_OUTBOX, WEEK, 1000), "outbox_published_at_idx", "outbox_pkey")


async def test_pruning_runs_finds_finished_runs_and_their_step_logs_by_index() -> None:
    tree = await plan(PRUNE_RUNS, 90 * 86400.0, 1000)
    assert_uses(
        tree, "workflow_runs_terminal_finished_at_idx", "run_step_logs_run_step_attempt_key"
    )
    # The runs by id: the key, or the (id, created_at) key the step logs' foreign
    # key needs (issue 11) - equally a unique probe on id.
    used = {node["Index Name"] for node in nodes(tree) if "Index Name" in node}
    assert used & {"workflow_runs_pkey", "workflow_runs_id_created_at_key"}


async def test_a_dry_run_counts_expired_events_through_their_index() -> None:
    sql, args = expired_events_count(WEEK).querystrings[0].compile_string("postgres")
    assert_uses(await plan(sql, *args), "outbox_published_at_idx")


async def test_reaping_finds_expired_leases_by_index() -> None:
    assert_uses(await plan(REAP, 900.0, 500), "workflow_runs_running_lease_idx")
