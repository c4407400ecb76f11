"""COPY-based bulk loading through the Table definitions."""

from __future__ import annotations

import uuid

import pytest

from flowforge import bulk
from flowforge.db.engine import DB
from flowforge.db.tables import Outbox, User
from flowforge.errors import ConflictError, InvalidInputError, translated_db_errors
from flowforge.jsonutil import loads

pytestmark = pytest.mark.usefixtures("db")


async def test_copy_rows_loads_many_rows_with_database_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bulk, "CHUNK_ROWS", 7)  # several chunks
    aggregate = uuid.uuid4()
    rows = (
        {"aggregate_type": "workflow", "aggregate_id": aggregate, "event_type": "e",
         "payload": {"n": n}}
        for n in range(25)
    )  # fmt: skip
    async with DB.transaction():
        assert await bulk.copy_rows(Outbox, rows) == 25
    loaded = await DB.fetch("SELECT id, payload, created_at FROM outbox ORDER BY payload->'n'")
    assert [loads(row["payload"])["n"] for row in loaded] == list(range(25))
    assert all(row["id"] is not None and row["created_at"] is not None for row in loaded)


async def test_copy_rows_is_atomic_with_the_transaction() -> None:
    rows = [{"email": f"u{n}@example.com", "display_name": "U"} for n in range(3)]
    rows.append({"email": "not-an-email", "display_name": "U"})
    with pytest.raises(ConflictError, match="email address is not valid"):
        async with translated_db_errors(), DB.transaction():
            await bulk.copy_rows(User, rows)
    assert (await DB.fetch("SELECT count(*) AS n FROM users"))[0]["n"] == 0


async def test_unknown_or_inconsistent_columns_are_rejected() -> None:
    async with DB.transaction():
        with pytest.raises(InvalidInputError, match="no column"):
            await bulk.copy_rows(User, [{"email": "a@b.c", "nickname": "x"}])
        with pytest.raises(InvalidInputError, match="same columns"):
            await bulk.copy_rows(
                User, [{"email": "a@b.c", "display_name": "x"}, {"email": "b@c.d"}]
            )
        assert await bulk.copy_rows(User, []) == 0


async def test_copy_rows_needs_a_transaction() -> None:
    with pytest.raises(RuntimeError, match="transaction"):
        await bulk.copy_rows(User, [{"email": "a@b.c", "display_name": "x"}])
