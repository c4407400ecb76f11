"""The Piccolo internals flowforge/db/engine.py relies on, pinned.

``FlowForgeEngine`` overrides ``PostgresEngine._run_in_pool`` and
``_run_in_new_connection`` (acquire timeout, fail fast while the pool starts),
and ``SafeTransaction`` reads ``PostgresTransaction._parent``, ``_committed``
and ``_rolled_back`` and sets ``connection``, ``transaction`` and ``context``
(docs/decisions/06-connection-pool.md and docs/decisions/13-piccolo-internals.md); ``queries.limited`` replaces
a Select's ``limit_delegate._limit`` so that LIMIT is a bind parameter (decision
1). None of these is public API:
a Piccolo release that renames one, or stops routing queries through it,
would silently bypass the timeout or leak connections. Each test here fails
on such a release.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from piccolo.engine.postgres import PostgresEngine, PostgresTransaction

from flowforge.db.builder import Param, compiled, limited
from flowforge.db.engine import DB, FlowForgeEngine, SafeTransaction
from flowforge.db.tables import User

pytestmark = pytest.mark.usefixtures("db")


def parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_overridden_methods_exist_upstream_with_the_same_signatures() -> None:
    for name in ("_run_in_pool", "_run_in_new_connection"):
        assert parameters(getattr(PostgresEngine, name)) == ["self", "query", "args"], name
        assert parameters(getattr(FlowForgeEngine, name)) == ["self", "query", "args"], name
    for name in ("check_version", "prep_database", "get_new_connection"):
        assert parameters(getattr(PostgresEngine, name)) == ["self"], name
    assert parameters(PostgresTransaction.__init__) == ["self", "engine", "allow_nested"]
    for name in ("begin", "commit", "rollback"):
        assert parameters(getattr(PostgresTransaction, name)) == ["self"], name


def test_the_migration_step_state_only_constraints_overrides_is_upstream() -> None:
    """StateOnlyConstraints (flowforge/db/online.py) silences Piccolo's ADD CONSTRAINT
    step; a release that renames it would add the constraint a second time."""
    from piccolo.apps.migrations.auto.migration_manager import MigrationManager

    from flowforge.db.online import StateOnlyConstraints

    assert parameters(MigrationManager._run_add_constraints) == ["self", "backwards"]
    assert "self._run_add_constraints(backwards=backwards)" in inspect.getsource(
        MigrationManager.run
    )
    assert issubclass(StateOnlyConstraints, MigrationManager)


def test_the_transaction_attributes_safe_transaction_uses_are_upstream_slots() -> None:
    slots = set(PostgresTransaction.__slots__)
    assert {"_parent", "_committed", "_rolled_back", "connection", "transaction"} <= slots
    assert "context" in slots
    assert issubclass(SafeTransaction, PostgresTransaction)


async def test_queries_outside_a_transaction_go_through_run_in_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    original = DB._run_in_pool

    async def spy(query: str, args: Any = None) -> Any:
        calls.append(query)
        return await original(query, args)

    monkeypatch.setattr(DB, "_run_in_pool", spy)
    await User.count().run()
    assert len(calls) == 1 and "users" in calls[0]


async def test_queries_without_a_pool_go_through_run_in_new_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    original = DB._run_in_new_connection

    async def spy(query: str, args: Any = None) -> Any:
        calls.append(query)
        return await original(query, args)

    monkeypatch.setattr(DB, "_run_in_new_connection", spy)
    await User.count().run(in_pool=False)
    assert len(calls) == 1


async def test_a_nested_transaction_has_its_parent_and_commit_and_rollback_set_their_flags() -> (
    None
):
    async with DB.transaction() as outer:
        nested = DB.transaction()
        assert nested._parent is outer
        async with nested as inner:
            assert inner is outer
        assert DB.current_transaction.get() is outer
        await User.count().run()  # on the transaction's connection
    assert outer._committed and not outer._rolled_back
    assert DB.current_transaction.get() is None

    with pytest.raises(RuntimeError):
        async with DB.transaction() as failed:
            raise RuntimeError("roll back")
    assert failed._rolled_back and not failed._committed
    assert DB.current_transaction.get() is None


async def test_piccolo_queries_in_a_transaction_use_its_connection() -> None:
    async with DB.transaction() as transaction:
        pid = await transaction.connection.fetchval("SELECT pg_backend_pid()")
        rows = await User.raw("SELECT pg_backend_pid() AS pid").run()
    assert rows[0]["pid"] == pid


async def test_a_bound_limit_is_written_where_piccolo_writes_its_limit() -> None:
    query = limited(
        User.select(User.email).where(User.email.like(Param("pattern"))).order_by(User.email),
        Param("limit"),
    )
    sql, template = query.querystrings[0].compile_string("postgres")
    assert sql.rstrip().endswith("LIMIT $2"), sql
    assert [param.name for param in template] == ["pattern", "limit"]
    async with DB.transaction():
        for email in ("a@example.com", "b@example.com", "c@example.com"):
            await User.insert(User(email=email, display_name="x", role="viewer")).run()
        once = compiled("test.bound_limit", lambda: query)
        for limit in (1, 2, 3):
            rows = await once.fetch(pattern="%@example.com", limit=limit)
            assert len(rows) == limit
