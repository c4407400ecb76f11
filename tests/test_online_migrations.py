"""flowforge.db.online: the steps raw migrations are built from, on a scratch database.

Each step is idempotent (run twice, the second does nothing), bounded in its
lock wait (a held lock makes it retry, not queue), and bad data stops it with
the rows named, leaving a state from which the same step runs again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from flowforge.db import online
from flowforge.db.engine import DB
from tests import support

ROWS = 12_000

BACKFILL = """
WITH batch AS (
    SELECT id FROM items WHERE id > $1 ORDER BY id LIMIT $2
), changed AS (
    UPDATE items i SET doubled = (i.amount * 2)::smallint
    FROM batch WHERE i.id = batch.id AND i.doubled IS NULL
    RETURNING 1
)
SELECT (SELECT max(id) FROM batch) AS last, (SELECT count(*) FROM changed) AS done
"""


@pytest.fixture
async def scratch_url() -> AsyncIterator[str]:
    async with support.scratch_database("online") as url:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(
                "CREATE TABLE items (id bigint PRIMARY KEY, amount int NOT NULL, doubled smallint);"
                f"INSERT INTO items (id, amount) SELECT g, g % 1000 FROM generate_series(1, {ROWS}) g"
            )
        finally:
            await connection.close()
        async with support.global_engine_on(url):
            yield url


@pytest.fixture
async def lines() -> list[str]:
    return []


@pytest.fixture
async def steps(scratch_url: str, lines: list[str]) -> AsyncIterator[online.OnlineMigration]:
    async with online.OnlineMigration.connect("test") as migration:
        migration.report = lines.append
        yield migration


async def test_a_backfill_runs_in_batches_and_again_does_nothing(
    steps: online.OnlineMigration, scratch_url: str, lines: list[str]
) -> None:
    done = await steps.backfill("double", BACKFILL, start=0, rows=1000)
    assert (done.rows, done.batches) == (ROWS, 12)
    assert any(line.startswith(f"[test] double ({ROWS} rows): ") for line in lines)
    again = await steps.backfill("double", BACKFILL, start=0, rows=1000)
    assert again.rows == 0
    connection = await asyncpg.connect(scratch_url)
    try:
        assert not await connection.fetchval(
            "SELECT count(*) FROM items WHERE doubled IS DISTINCT FROM amount * 2"
        )
    finally:
        await connection.close()


async def test_bad_data_stops_a_backfill_naming_the_row_and_a_rerun_resumes(
    steps: online.OnlineMigration, scratch_url: str
) -> None:
    connection = await asyncpg.connect(scratch_url)
    try:
        # 40000 * 2 does not fit a smallint: the row after key 5000 stops it.
        await connection.execute("UPDATE items SET amount = 40000 WHERE id = 5001")
        with pytest.raises(online.MigrationDataError) as stopped:
            await steps.backfill("double", BACKFILL, start=0, rows=1000)
        assert "'first_failing_row_after_key': 5000" in str(stopped.value)
        assert "out of range" in str(stopped.value)
        # The batches before it are committed (and the single rows up to it).
        assert await connection.fetchval("SELECT count(*) FROM items WHERE doubled IS NULL") == (
            ROWS - 5000
        )
        await connection.execute("UPDATE items SET amount = 1 WHERE id = 5001")
        resumed = await steps.backfill("double", BACKFILL, start=0, rows=1000)
        assert resumed.rows == ROWS - 5000
    finally:
        await connection.close()


async def test_a_locked_step_waits_boundedly_and_retries(
    steps: online.OnlineMigration, scratch_url: str, lines: list[str]
) -> None:
    holder = await asyncpg.connect(scratch_url)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("LOCK TABLE items IN ACCESS SHARE MODE")  # a long reader
        step = asyncio.ensure_future(
            steps.locked(
                "add a column",
                "ALTER TABLE items ADD COLUMN IF NOT EXISTS note text",
                lock_timeout="100ms",
            )
        )
        for _ in range(500):
            if any("lock not granted" in line for line in lines):
                break
            await asyncio.sleep(0.01)
        assert any("[test] add a column: lock not granted, try 2" in line for line in lines)
        # Meanwhile nothing queues behind the migration for long: a read goes through.
        reader = await asyncpg.connect(scratch_url)
        try:
            assert await reader.fetchval("SELECT count(*) FROM items") == ROWS
        finally:
            await reader.close()
        await transaction.rollback()
        await step
    finally:
        await holder.close()
    assert any(line.startswith("[test] add a column (exclusive): ") for line in lines)
    await steps.locked("add a column", "ALTER TABLE items ADD COLUMN IF NOT EXISTS note text")


async def test_a_constraint_added_not_valid_then_validated_names_the_rows_that_break_it(
    steps: online.OnlineMigration, scratch_url: str
) -> None:
    add = "ALTER TABLE items ADD CONSTRAINT items_amount_small CHECK (amount < 999) NOT VALID"
    await steps.add_constraint("items", "items_amount_small", add)
    await steps.add_constraint("items", "items_amount_small", add)  # there: nothing to do
    offenders = "SELECT id, amount FROM items WHERE NOT amount < 999 ORDER BY id LIMIT 10"
    with pytest.raises(online.MigrationDataError) as stopped:
        await steps.validate("items", "items_amount_small", offenders=offenders)
    message = str(stopped.value)
    assert "items: validate items_amount_small" in message
    assert "{'id': 999, 'amount': 999}" in message
    found = await steps.constraint("items", "items_amount_small")
    assert found is not None
    assert not found["validated"]
    connection = await asyncpg.connect(scratch_url)
    try:
        await connection.execute("DELETE FROM items WHERE amount >= 999")
    finally:
        await connection.close()
    await steps.validate("items", "items_amount_small", offenders=offenders)
    found = await steps.constraint("items", "items_amount_small")
    assert found is not None
    assert found["validated"]


async def test_an_index_build_is_idempotent_and_duplicates_are_named(
    steps: online.OnlineMigration, scratch_url: str, lines: list[str]
) -> None:
    create = "CREATE UNIQUE INDEX CONCURRENTLY items_amount_key ON items (amount)"
    with pytest.raises(online.MigrationDataError) as stopped:
        await steps.build_index("items_amount_key", "items", create)
    assert "duplicate keys on items" in str(stopped.value)
    assert "(amount)=(" in str(stopped.value)
    assert await steps.index_valid("items_amount_key", "items") is None  # no INVALID leftover

    # An INVALID index (an interrupted build) is dropped and built again.
    connection = await asyncpg.connect(scratch_url)
    try:
        await connection.execute(
            "CREATE INDEX items_doubled_idx ON items (doubled);"
            "UPDATE pg_index SET indisvalid = false "
            "WHERE indexrelid = 'items_doubled_idx'::regclass"
        )
    finally:
        await connection.close()
    assert await steps.index_valid("items_doubled_idx", "items") is False
    create = "CREATE INDEX CONCURRENTLY items_doubled_idx ON items (doubled)"
    await steps.build_index("items_doubled_idx", "items", create)
    assert await steps.index_valid("items_doubled_idx", "items") is True
    built = len(lines)
    await steps.build_index("items_doubled_idx", "items", create)  # valid: skipped
    assert len(lines) == built
    await steps.drop_index("items_doubled_idx")
    await steps.drop_index("items_doubled_idx")
    assert await steps.index_valid("items_doubled_idx", "items") is None


async def test_refused_inside_a_piccolo_transaction(scratch_url: str) -> None:
    await DB.start_connection_pool(min_size=1, max_size=2)
    try:
        async with DB.transaction():
            with pytest.raises(RuntimeError, match="wrap_in_transaction=False"):
                async with online.OnlineMigration.connect("test"):
                    pass
    finally:
        await DB.close_connection_pool()
