"""Small helpers for Piccolo's query builder, used by the domain modules.

The builder is the default way FlowForge queries its Tables (docs/decisions/01-orm-approach.md):
a renamed column is then an AttributeError at import time, not a failing
statement at run time. Two things it does not say on its own:

* :func:`new_row`: an INSERT that leaves every column it is not given to the
  database (``DEFAULT``): ids (``gen_random_uuid()``) and timestamps (the
  transaction's ``now()``) stay server-side (docs/decisions/03-uuid-generation.md), exactly like a raw
  INSERT that omits them.
* :func:`page_after`: the keyset condition ``(created_at, id) < (cursor)`` as a row
  comparison, which PostgreSQL uses as one index condition on the
  ``(…, created_at, id)`` indexes.
* :func:`ago`: a moment `seconds` before the transaction's ``now()``, on the
  server clock (retention cut-offs), like the raw statements write it.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, LiteralString, TypeVar
from uuid import UUID

from piccolo.columns import JSON, JSONB, Column
from piccolo.columns.combination import WhereRaw
from piccolo.query.base import Query
from piccolo.query.proxy import Proxy
from piccolo.querystring import QueryString
from piccolo.table import Table

from flowforge.db.engine import DB

DEFAULT = QueryString("DEFAULT")
# The transaction's timestamp, as a value in an UPDATE (server clock, like DEFAULT).
NOW = QueryString("now()")


def ago(seconds: float) -> QueryString:
    """``now() - make_interval(secs => seconds)``: a cut-off on the server clock."""
    return QueryString("now() - make_interval(secs => {}::float8)", seconds)


T = TypeVar("T", bound=Table)


def new_row(table: type[T], **values: Any) -> T:
    """A row to INSERT: `values`, and ``DEFAULT`` for every other column.

    JSON columns take their Piccolo default instead (the builder encodes
    them itself and cannot pass ``DEFAULT`` through).
    """
    unknown = set(values) - {column._meta.name for column in table._meta.columns}
    if unknown:
        raise TypeError(f"{table.__name__} has no column(s) {sorted(unknown)}")
    defaults: dict[str, Any] = {
        column._meta.name: DEFAULT
        for column in table._meta.columns
        if column._meta.name not in values and not isinstance(column, JSON | JSONB)
    }
    return table(_ignore_missing=True, **defaults, **values)


def page_after(
    table: type[Table], position: tuple[datetime.datetime | Param, UUID | Param]
) -> WhereRaw:
    """``(created_at, id) < (position)`` on `table`: the next page, newest first."""
    created_at, row_id = position
    name = table._meta.tablename
    return WhereRaw(
        f'("{name}"."created_at", "{name}"."id") < ({{}}, {{}})',  # constant table name
        created_at,
        row_id,
    )


def column_list(*columns: Column, alias: LiteralString = "") -> LiteralString:
    """``a, b, c`` (or ``x.a, x.b``) for raw SQL, from Table columns.

    The one place where text that is not a literal becomes SQL: identifiers
    from the Table classes, never client text. A column renamed in
    ``tables.py`` renames it here, and tests/test_sql_statements.py prepares
    every statement built with it against the migrated schema.
    """
    prefix = f"{alias}." if alias else ""
    return ", ".join(f"{prefix}{column._meta.db_column_name}" for column in columns)


# -- builder queries compiled once ---------------------------------------------------------


class Param:
    """A named placeholder for a value in a query compiled once (see :func:`compiled`)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Param({self.name!r})"


@dataclass(frozen=True, slots=True)
class Compiled:
    """The SQL Piccolo's builder wrote for a query, and where each value goes."""

    sql: LiteralString
    template: tuple[Any, ...]  # Param(name) for a value given at run time, else the value

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        return [values[a.name] if isinstance(a, Param) else a for a in self.template]

    async def fetch(self, **values: Any) -> list[dict[str, Any]]:
        """Rows as dicts, in the current transaction (RuntimeError outside one)."""
        connection = DB.require_transaction().connection
        rows = await connection.fetch(self.sql, *self.arguments(values))
        return [dict(row) for row in rows]

    async def first(self, **values: Any) -> dict[str, Any] | None:
        rows = await self.fetch(**values)
        return rows[0] if rows else None


_COMPILED: dict[Hashable, Compiled] = {}


def compiled(key: Hashable, build: Callable[[], Query[Any, Any] | Proxy[Any, Any]]) -> Compiled:
    """`build()`'s SQL, compiled by Piccolo once per `key` and reused.

    For builder queries on paths that run per request: building a query is
    Python work (about 0.3-0.5 ms, measured) that costs more than a cheap
    indexed read itself. `build` uses :class:`Param` where a value goes and
    `key` names everything else that shapes the SQL (which filters, the
    limit). The SQL is still Piccolo's, from the Table classes: a renamed
    column is renamed in it too, and a Table that its migrations do not match
    fails the drift test (tests/test_migrations.py).
    """
    found = _COMPILED.get(key)
    if found is None:
        query = build()
        if isinstance(query, Proxy):  # .first(), .output(...): the query inside
            query = query.query
        sql, template = query.querystrings[0].compile_string("postgres")
        found = _COMPILED[key] = Compiled(sql, tuple(template))
    return found
