"""Small helpers for Piccolo's query builder, used by the domain modules.

The builder is the default way FlowForge queries its Tables (decision 1):
a renamed column is then an AttributeError at import time, not a failing
statement at run time. Two things it does not say on its own:

* :func:`new_row`: an INSERT that leaves every column it is not given to the
  database (``DEFAULT``): ids (``gen_random_uuid()``) and timestamps (the
  transaction's ``now()``) stay server-side (decision 3), exactly like a raw
  INSERT that omits them.
* :func:`page_after`: the keyset condition ``(created_at, id) < (cursor)`` as a row
  comparison, which PostgreSQL uses as one index condition on the
  ``(…, created_at, id)`` indexes.
"""

from __future__ import annotations

import datetime
from typing import Any, LiteralString, TypeVar
from uuid import UUID

from piccolo.columns import JSON, JSONB, Column
from piccolo.columns.combination import WhereRaw
from piccolo.querystring import QueryString
from piccolo.table import Table

DEFAULT = QueryString("DEFAULT")
# The transaction's timestamp, as a value in an UPDATE (server clock, like DEFAULT).
NOW = QueryString("now()")

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


def page_after(table: type[Table], position: tuple[datetime.datetime, UUID]) -> WhereRaw:
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
