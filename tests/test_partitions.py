"""Time partitions (issue 11): the invariants on partitioned tables, the maintenance
command, and retention by dropping whole partitions.

Each test starts from emptied tables (the `db` fixture) and ends by dropping the
past partitions it created (empty by then), so later TRUNCATEs stay quick.
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from flowforge.core.errors import ConflictError, translated_db_errors
from flowforge.core.settings import get_settings
from flowforge.db.engine import DB
from flowforge.jobs import partitions
from flowforge.jobs.retention import prune
from tests import support

pytestmark = pytest.mark.usefixtures("db")

DAY = datetime.timedelta(days=1)


@pytest.fixture(autouse=True)
async def tidy_partitions() -> AsyncIterator[None]:
    yield
    await DB.fetch(f"TRUNCATE {', '.join(support.APP_TABLES)} CASCADE")
    await support.drop_empty_past_partitions()
    for spec in partitions.SPECS:  # far-future ones a test made
        async with DB.transaction():
            found = await partitions.partitions(spec)
        for partition in found:
            far = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=200)
            if partition.lower is not None and partition.lower > far:
                await DB.fetch(f"DROP TABLE {partition.name}")


async def names(spec: partitions.Spec) -> set[str]:
    async with DB.transaction():
        return {p.name for p in await partitions.partitions(spec)}


async def where_is(table: str, key: str, value: Any) -> str:
    rows = await DB.fetch(f"SELECT tableoid::regclass::text FROM {table} WHERE {key} = $1", value)
    return str(rows[0][0])


async def make_run(
    created: datetime.datetime, status: str = "completed", finished: datetime.datetime | None = None
) -> tuple[uuid.UUID, datetime.datetime]:
    user = (
        await DB.fetch(
            "INSERT INTO users (email, display_name) VALUES ($1, 'U') "
            "ON CONFLICT DO NOTHING RETURNING id",
            "p@example.com",
        )
        or await DB.fetch("SELECT id FROM users WHERE email = 'p@example.com'")
    )[0][0]
    workflow = (
        await DB.fetch("INSERT INTO workflows (owner_id, name) VALUES ($1, 'w') RETURNING id", user)
    )[0][0]
    started = created + datetime.timedelta(seconds=1)
    ended = created + datetime.timedelta(seconds=30)
    finished = None if status == "running" else finished or ended
    row = (
        await DB.fetch(
            "INSERT INTO workflow_runs (workflow_id, status, created_at, started_at, finished_at, "
            "error) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, created_at",
            workflow,
            status,
            created,
            started,
            finished,
            "boom" if status == "failed" else None,
        )
    )[0]
    await DB.fetch(
        "INSERT INTO run_step_logs (run_id, run_created_at, step_position, step_name, status, "
        "started_at) VALUES ($1, $2, 0, 's', 'running', $3)",
        row["id"],
        row["created_at"],
        started,
    )
    return row["id"], row["created_at"]


async def insert_event(created: datetime.datetime, published: datetime.datetime | None) -> Any:
    return (
        await DB.fetch(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, created_at, "
            "published_at) VALUES ('workflow_run', gen_random_uuid(), 'run.created', $1, $2) "
            "RETURNING id",
            created,
            published,
        )
    )[0][0]


# -- the invariants on partitioned tables ----------------------------------------


async def test_one_log_per_run_step_and_attempt_holds_across_partitions() -> None:
    now = datetime.datetime.now(datetime.UTC)
    run, created = await make_run(now, status="running")
    # The same attempt again: refused with the constraint's message, although
    # PostgreSQL reports it under the partition's own index.
    with pytest.raises(ConflictError) as caught:
        async with translated_db_errors(), DB.transaction():
            await DB.fetch(
                "INSERT INTO run_step_logs (run_id, run_created_at, step_position, step_name) "
                "VALUES ($1, $2, 0, 's')",
                run,
                created,
            )
    assert caught.value.details["constraint"] == "run_step_logs_run_step_attempt_key"
    assert caught.value.message == "This attempt of this step is already logged for the run."
    # ... and with another run_created_at (another partition): refused by the
    # composite foreign key, so the unique key cannot be dodged that way.
    with pytest.raises(ConflictError) as caught:
        async with translated_db_errors(), DB.transaction():
            await DB.fetch(
                "INSERT INTO run_step_logs (run_id, run_created_at, step_position, step_name) "
                "VALUES ($1, $2, 0, 's')",
                run,
                created - 40 * DAY,
            )
    assert caught.value.details["constraint"] == "run_step_logs_run_id_fkey"


async def test_a_run_and_its_step_logs_share_a_partition_and_cascade() -> None:
    now = datetime.datetime.now(datetime.UTC)
    run, created = await make_run(now, status="running")
    expected = partitions.partition_name(
        partitions.STEP_LOGS, partitions.period_start(created, "month")
    )
    assert await where_is("run_step_logs", "run_id", run) == expected
    await DB.fetch("DELETE FROM workflow_runs WHERE id = $1", run)
    assert not await DB.fetch("SELECT 1 FROM run_step_logs WHERE run_id = $1", run)


async def test_updated_at_trigger_and_outbox_notify_work_on_partitions(database_url: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    run, _ = await make_run(now, status="running")
    before = (await DB.fetch("SELECT updated_at FROM run_step_logs WHERE run_id = $1", run))[0][0]
    await asyncio.sleep(0.01)
    await DB.fetch("UPDATE run_step_logs SET step_name = 't' WHERE run_id = $1", run)
    after = (await DB.fetch("SELECT updated_at FROM run_step_logs WHERE run_id = $1", run))[0][0]
    assert after > before

    listener = await asyncpg.connect(database_url)
    heard: asyncio.Queue[str] = asyncio.Queue()
    try:
        await listener.add_listener("flowforge_outbox", lambda *args: heard.put_nowait(args[2]))
        await insert_event(now, None)
        assert await asyncio.wait_for(heard.get(), 10) == "flowforge_outbox"
    finally:
        await listener.close()


async def test_the_relay_claim_index_is_on_every_partition() -> None:
    rows = await DB.fetch(
        """
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'outbox'::regclass
            AND NOT EXISTS (SELECT 1 FROM pg_indexes x
                            WHERE x.tablename = c.relname
                                AND x.indexname = c.relname || '_claim_idx'
                                AND x.indexdef LIKE '%WHERE ((published_at IS NULL) AND%')
        """
    )
    assert rows == []


# -- maintenance -----------------------------------------------------------------


async def test_partitions_command_prepares_ahead_and_is_idempotent(database_url: str) -> None:
    today = partitions.period_start(datetime.datetime.now(datetime.UTC), "day")
    ahead = partitions.partition_name(partitions.OUTBOX, today + 7 * DAY)
    await DB.fetch(f"DROP TABLE IF EXISTS {ahead}")  # as if a day had passed

    first = support.piccolo("flowforge", "partitions", database_url=database_url)
    assert f"created: {ahead}" in first.stdout
    assert ahead in await names(partitions.OUTBOX)
    month = partitions.period_start(today, "month", partitions.PARTITION_MONTHS_AHEAD)
    assert partitions.partition_name(partitions.STEP_LOGS, month) in await names(
        partitions.STEP_LOGS
    )

    second = support.piccolo("flowforge", "partitions", database_url=database_url)
    assert "created: -" in second.stdout and "dropped: -" in second.stdout


async def test_a_row_outside_the_prepared_range_is_kept_then_moved_to_its_partition() -> None:
    far = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=400)
    event = await insert_event(far, None)
    assert await where_is("outbox", "id", event) == "outbox_default"

    report = await partitions.ensure(partitions.MaintenanceReport())
    home = partitions.partition_name(partitions.OUTBOX, partitions.period_start(far, "day"))
    assert home in report.created
    assert await where_is("outbox", "id", event) == home
    assert (await DB.fetch("SELECT count(*) FROM outbox_default"))[0][0] == 0
    # Its indexes are named after the table's, like every other partition's.
    indexes = {
        r[0] for r in await DB.fetch("SELECT indexname FROM pg_indexes WHERE tablename = $1", home)
    }
    assert {f"{home}_pkey", f"{home}_claim_idx"} <= indexes


# -- retention by dropping partitions ------------------------------------------


async def test_prune_drops_only_partitions_whose_every_row_expired() -> None:
    now = datetime.datetime.now(datetime.UTC)
    old = partitions.period_start(now - 20 * DAY, "day")
    # Day A: all published long ago -> the whole partition goes.
    for _ in range(3):
        await insert_event(old, old + datetime.timedelta(minutes=1))
    # Day B: one event never published -> kept; its published ones are deleted.
    kept_unpublished = await insert_event(old + DAY, None)
    await insert_event(old + DAY, old + DAY + datetime.timedelta(minutes=1))
    # Day C: published late (2 days ago) -> not yet expired.
    late = await insert_event(old + 2 * DAY, now - 2 * DAY)
    await partitions.ensure(partitions.MaintenanceReport())
    day = {n: partitions.partition_name(partitions.OUTBOX, old + n * DAY) for n in range(3)}
    assert set(day.values()) <= await names(partitions.OUTBOX)

    # Step logs: month M has only runs finished long ago; month M+1 has a running one.
    month = partitions.period_start(now, "month", -5)
    await make_run(month + DAY)
    await make_run(month + 2 * DAY, status="failed")
    running, _ = await make_run(partitions.period_start(now, "month", -4) + DAY, status="running")
    finished_next, _ = await make_run(partitions.period_start(now, "month", -4) + 2 * DAY)
    await partitions.ensure(partitions.MaintenanceReport())
    month_m = partitions.partition_name(partitions.STEP_LOGS, month)
    month_next = partitions.partition_name(
        partitions.STEP_LOGS, partitions.period_start(now, "month", -4)
    )
    # The runs' history goes with them (issue 17): the same month's partition.
    history_m = partitions.partition_name(partitions.HISTORY, month)

    dry = await prune(get_settings(), dry_run=True)
    assert dry.partition_report is not None
    assert set(dry.partition_report.dropped) == {day[0], month_m, history_m}
    assert {day[0], month_m} <= await names(partitions.OUTBOX) | await names(partitions.STEP_LOGS)

    report = await prune(get_settings())
    assert report.partition_report is not None
    assert set(report.partition_report.dropped) == {day[0], month_m, history_m}
    assert history_m not in await names(partitions.HISTORY)
    outbox_left, logs_left = await names(partitions.OUTBOX), await names(partitions.STEP_LOGS)
    assert day[0] not in outbox_left and {day[1], day[2]} <= outbox_left
    assert month_m not in logs_left and month_next in logs_left
    # The rest went row by row: the published event of day B, the finished run of M+1.
    assert {r[0] for r in await DB.fetch("SELECT id FROM outbox")} == {kept_unpublished, late}
    assert report.outbox_events == 1
    runs = {r[0] for r in await DB.fetch("SELECT id FROM workflow_runs")}
    assert running in runs and finished_next not in runs and len(runs) == 1


async def test_a_dry_run_reports_what_the_real_prune_then_does() -> None:
    """Rows of a partition that would be dropped are counted once, as the drop's.

    The dry run counted them a second time in its row-by-row figures (step_logs=104
    against the real prune's 24 row by row + 80 dropped).
    """
    now = datetime.datetime.now(datetime.UTC)
    old = partitions.period_start(now - 20 * DAY, "day")
    for minute in range(4):  # a day partition whose every event expired: dropped
        at = old + datetime.timedelta(minutes=minute)
        await insert_event(at, at + datetime.timedelta(seconds=1))
    await insert_event(old + DAY, None)  # the next day is kept (one never published) ...
    await insert_event(old + DAY, old + DAY)  # ... and its expired event goes row by row
    month = partitions.period_start(now, "month", -5)
    for day in range(3):  # a month of finished runs: its step logs' partition is dropped
        await make_run(month + day * DAY)
    next_month = partitions.period_start(now, "month", -4)
    await make_run(next_month + DAY, status="running")  # keeps the next month ...
    for day in (2, 3):  # ... whose expired runs and step logs go row by row
        await make_run(next_month + day * DAY, status="failed")
    await partitions.ensure(partitions.MaintenanceReport())

    dry = await prune(get_settings(), dry_run=True)
    real = await prune(get_settings())

    def figures(report: Any) -> dict[str, Any]:
        return {
            "outbox_events": report.outbox_events,
            "runs": report.runs,
            "step_logs": report.step_logs,
            "partition_rows": report.partition_rows,
            "dropped": sorted(report.partition_report.dropped),
        }

    assert figures(real) == {
        "outbox_events": 1,
        "runs": 5,
        "step_logs": 2,
        # Each run's history: created (as completed), its step log created.
        "partition_rows": {"outbox": 4, "run_step_logs": 3, "run_history": 6},
        "dropped": sorted(
            [
                partitions.partition_name(partitions.OUTBOX, old),
                partitions.partition_name(partitions.STEP_LOGS, month),
                partitions.partition_name(partitions.HISTORY, month),
            ]
        ),
    }
    assert figures(dry) == figures(real)
    assert (
        dry.describe().replace("would prune", "pruned").replace("would drop", "dropped")
        == real.describe()
    )


def pruned_samples() -> dict[str, float]:
    from prometheus_client import REGISTRY, generate_latest

    from tests.metrics_support import parse

    samples = parse(generate_latest(REGISTRY).decode())
    return {k: v for k, v in samples.items() if k.startswith("flowforge_pruned_rows_total")}


async def test_rows_of_dropped_partitions_count_as_pruned(database_url: str) -> None:
    """flowforge_pruned_rows_total and prune's output include the exact rows of the
    partitions it drops (not the statistics' estimate: never analyzed here)."""
    now = datetime.datetime.now(datetime.UTC)
    old = partitions.period_start(now - 20 * DAY, "day")
    for minute in range(5):
        at = old + datetime.timedelta(minutes=minute)
        await insert_event(at, at + datetime.timedelta(seconds=1))
    month = partitions.period_start(now, "month", -5)
    for day in range(3):
        await make_run(month + day * DAY)  # a finished run with one step log each
    await partitions.ensure(partitions.MaintenanceReport())
    expected = {"outbox": 5, "run_step_logs": 3, "run_history": 6}
    dropping = "3 expired partitions (5 events, 3 step logs, 6 history entries)"

    dry = support.piccolo("flowforge", "prune", "--dry_run", database_url=database_url)
    assert f"would drop {dropping}" in dry.stdout, dry.stdout

    before = pruned_samples()
    report = await prune(get_settings())
    assert report.partition_report is not None and len(report.partition_report.dropped) == 3
    assert report.partition_rows == expected
    assert f"dropped {dropping}" in report.describe()
    after = pruned_samples()
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    assert delta['flowforge_pruned_rows_total{kind="outbox_events"}'] == 5
    # The runs go row by row after their step logs' partition: counted once each.
    assert delta['flowforge_pruned_rows_total{kind="step_logs"}'] == 3
    assert delta['flowforge_pruned_rows_total{kind="runs"}'] == 3
    assert delta['flowforge_pruned_rows_total{kind="history"}'] == 6
    assert (await DB.fetch("SELECT count(*) FROM workflow_runs"))[0][0] == 0


async def test_detach_keeps_expired_partitions_as_plain_tables(database_url: str) -> None:
    old = partitions.period_start(datetime.datetime.now(datetime.UTC) - 30 * DAY, "day")
    await insert_event(old, old + datetime.timedelta(minutes=1))
    await partitions.ensure(partitions.MaintenanceReport())
    name = partitions.partition_name(partitions.OUTBOX, old)

    result = support.piccolo("flowforge", "partitions", "--detach", database_url=database_url)
    assert f"detached: {name}" in result.stdout
    assert name not in await names(partitions.OUTBOX)
    assert (await DB.fetch(f"SELECT count(*) FROM {name}"))[0][0] == 1
    await DB.fetch(f"DROP TABLE {name}")


async def test_a_busy_partition_is_skipped_not_waited_for(database_url: str) -> None:
    old = partitions.period_start(datetime.datetime.now(datetime.UTC) - 30 * DAY, "day")
    await insert_event(old, old + datetime.timedelta(minutes=1))
    await partitions.ensure(partitions.MaintenanceReport())
    name = partitions.partition_name(partitions.OUTBOX, old)
    holder = await asyncpg.connect(database_url)
    try:
        async with holder.transaction():
            await holder.execute(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE")
            report = await partitions.drop_expired(
                partitions.MaintenanceReport(), outbox_retention_days=7, run_retention_days=0
            )
        assert name in report.skipped and name not in report.dropped
    finally:
        await holder.close()
    report = await partitions.drop_expired(
        partitions.MaintenanceReport(), outbox_retention_days=7, run_retention_days=0
    )
    assert name in report.dropped


async def test_the_relay_housekeeping_prepares_partitions_before_pruning() -> None:
    from flowforge.relay.publishers import LogPublisher
    from flowforge.relay.relay import Relay
    from tests import relay_support

    today = partitions.period_start(datetime.datetime.now(datetime.UTC), "day")
    ahead = partitions.partition_name(partitions.OUTBOX, today + 7 * DAY)
    await DB.fetch(f"DROP TABLE IF EXISTS {ahead}")
    old = partitions.period_start(datetime.datetime.now(datetime.UTC) - 30 * DAY, "day")
    await insert_event(old, old + datetime.timedelta(minutes=1))
    expired = partitions.partition_name(partitions.OUTBOX, old)

    relay = Relay(relay_support.relay_settings(), LogPublisher())
    await relay._prune()  # what the RELAY_PRUNE_INTERVAL timer runs
    outbox = await names(partitions.OUTBOX)
    assert ahead in outbox and expired not in outbox
    assert not await DB.fetch("SELECT 1 FROM outbox")


async def test_partitions_dry_run_changes_nothing(database_url: str) -> None:
    today = partitions.period_start(datetime.datetime.now(datetime.UTC), "day")
    ahead = partitions.partition_name(partitions.OUTBOX, today + 7 * DAY)
    await DB.fetch(f"DROP TABLE IF EXISTS {ahead}")
    result = support.piccolo("flowforge", "partitions", "--dry_run", database_url=database_url)
    assert f"would create: {ahead}" in result.stdout
    assert ahead not in await names(partitions.OUTBOX)


# -- the legacy partition the online migration leaves ----------------------------


async def attach_legacy(spec: partitions.Spec, bound: datetime.datetime) -> None:
    """What the partitioning migration leaves on a database converted with rows:
    the old table attached FOR VALUES FROM (MINVALUE) TO (its cutoff)."""
    await support.drop_empty_past_partitions()
    legacy = f"{spec.table}_legacy"
    await DB.fetch(
        f"CREATE TABLE {legacy} (LIKE {spec.table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )
    await DB.fetch(
        f"ALTER TABLE {spec.table} ATTACH PARTITION {legacy} "
        f"FOR VALUES FROM (MINVALUE) TO ('{bound.isoformat()}')"
    )


async def test_the_legacy_outbox_partition_is_kept_until_every_event_expired() -> None:
    now = datetime.datetime.now(datetime.UTC)
    bound = partitions.period_start(now - 20 * DAY, "day")
    await attach_legacy(partitions.OUTBOX, bound)
    await insert_event(bound - 5 * DAY, bound - 5 * DAY + datetime.timedelta(minutes=1))
    unpublished = await insert_event(bound - 3 * DAY, None)
    assert await where_is("outbox", "id", unpublished) == "outbox_legacy"
    async with DB.transaction():
        listed = {p.name: p for p in await partitions.partitions(partitions.OUTBOX)}
    assert (listed["outbox_legacy"].lower, listed["outbox_legacy"].upper) == (None, bound)

    # Maintenance as if run before the bound: the periods it covers get no partition.
    report = await partitions.ensure(partitions.MaintenanceReport(), now=bound - 2 * DAY)
    covered = {partitions.partition_name(partitions.OUTBOX, bound - n * DAY) for n in (1, 2)}
    assert not covered & (set(report.created) | await names(partitions.OUTBOX))
    assert partitions.partition_name(partitions.OUTBOX, bound) in await names(partitions.OUTBOX)

    # Past the retention, but one event was never published: kept, as any partition.
    report = await partitions.drop_expired(
        partitions.MaintenanceReport(), outbox_retention_days=7, run_retention_days=0
    )
    assert "outbox_legacy" not in report.dropped
    assert "outbox_legacy" in await names(partitions.OUTBOX)

    await DB.fetch(
        "UPDATE outbox SET published_at = $1 WHERE id = $2", bound - 2 * DAY, unpublished
    )
    dry = await prune(get_settings(), dry_run=True)
    assert dry.partition_report is not None and "outbox_legacy" in dry.partition_report.dropped
    assert dry.partition_rows.get("outbox") == 2  # MINVALUE lower bound: counted too
    pruned = await prune(get_settings())
    assert pruned.partition_report is not None
    assert "outbox_legacy" in pruned.partition_report.dropped
    assert pruned.partition_rows.get("outbox") == 2
    assert "outbox_legacy" not in await names(partitions.OUTBOX)


async def test_the_legacy_step_log_partition_goes_once_its_runs_expired() -> None:
    now = datetime.datetime.now(datetime.UTC)
    bound = partitions.period_start(now, "month", -4)
    await attach_legacy(partitions.STEP_LOGS, bound)
    old = partitions.period_start(now, "month", -6) + DAY
    await make_run(old)
    running, _ = await make_run(old + DAY, status="running")
    assert await where_is("run_step_logs", "run_id", running) == "run_step_logs_legacy"

    report = await partitions.drop_expired(
        partitions.MaintenanceReport(), outbox_retention_days=0, run_retention_days=90
    )
    assert "run_step_logs_legacy" not in report.dropped

    await DB.fetch(
        "UPDATE workflow_runs SET status = 'cancelled', finished_at = $1 WHERE id = $2",
        old + 2 * DAY,
        running,
    )
    report = await partitions.drop_expired(
        partitions.MaintenanceReport(), outbox_retention_days=0, run_retention_days=90
    )
    assert report.dropped == ["run_step_logs_legacy"]
    assert not await DB.fetch("SELECT 1 FROM run_step_logs")


def test_a_violation_on_the_legacy_partition_reads_as_the_table_constraint() -> None:
    from flowforge.core.errors import parent_constraint

    assert (
        parent_constraint("run_step_logs_legacy_run_step_attempt_key", "run_step_logs_legacy")
        == "run_step_logs_run_step_attempt_key"
    )
    assert parent_constraint("outbox_legacy_pkey", "outbox_legacy") == "outbox_pkey"
