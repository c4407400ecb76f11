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
* :func:`limited`: ``LIMIT`` as a bind parameter, so a query compiled once
  (:func:`compiled`) serves every page size.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, LiteralString, TypeVar
from uuid import UUID

from piccolo.columns import JSON, JSONB
from piccolo.columns.combination import WhereRaw
from piccolo.query.base import Query
from piccolo.query.methods.select import Select
from piccolo.query.mixins import Limit
from piccolo.query.proxy import Proxy
from piccolo.querystring import QueryString
from piccolo.table import Table

from flowforge.core.logs import get_logger
from flowforge.db.engine import DB
from flowforge.db.sql.keyset import newer_first_after

logger = get_logger("flowforge.db.builder")

DEFAULT = QueryString("DEFAULT")
# The transaction's timestamp, as a value in an UPDATE (server clock, like DEFAULT).
NOW = QueryString("now()")


def ago(seconds: float) -> QueryString:
    """``now() - make_interval(secs => seconds)``: a cut-off on the server clock."""
    return QueryString("now() - make_interval(secs => {}::float8)", seconds)


T = TypeVar("T", bound=Table)
S = TypeVar("S", bound=Select[Any])


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
    return WhereRaw(newer_first_after(table._meta.tablename), created_at, row_id)


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


class _BoundLimit(Limit):
    """``LIMIT $n``: Piccolo writes a limit into the SQL text; this binds it instead."""

    __slots__ = ("param",)

    def __init__(self, param: Param) -> None:
        super().__init__(number=0)  # unused: the querystring below replaces it
        self.param = param

    @property
    def querystring(self) -> QueryString:
        return QueryString(" LIMIT {}", self.param)

    def copy(self) -> _BoundLimit:
        return _BoundLimit(self.param)


def limited(query: S, limit: int | Param) -> S:
    """`query` with ``LIMIT limit``; a :class:`Param` limit is bound when the query runs.

    ``Select.limit()`` only takes an int and writes it into the SQL, so a query
    compiled once per limit would be compiled once per page size a client asks
    for. (Piccolo internals: the ``limit_delegate._limit`` slot, pinned by
    tests/test_piccolo_contract.py.)
    """
    if isinstance(limit, Param):
        query.limit_delegate._limit = _BoundLimit(limit)
        return query
    return query.limit(limit)


# What names a query's shape: a constant name, then booleans or enum members
# (which filters, lock or not). Never a value a client sends (a cursor, a
# limit, an id): those are Params, bound when the query runs.
ShapeKey = str | tuple[str, *tuple[bool | enum.Enum, ...]]

# Far more than the shapes FlowForge has (about 25): reaching it means a key
# is built from values after all, and the cache stops growing instead of
# eating memory request by request.
MAX_COMPILED: Final = 256
_COMPILED: dict[ShapeKey, Compiled] = {}


def _check_shape_key(key: ShapeKey) -> None:
    """TypeError for a key that could be made of client input (see ShapeKey)."""
    if isinstance(key, str):
        return
    if (
        isinstance(key, tuple)
        and key
        and isinstance(key[0], str)
        and all(type(part) is bool or isinstance(part, enum.Enum) for part in key[1:])
    ):
        return
    raise TypeError(
        f"compiled() key {key!r}: a name, then booleans or enum members only "
        "(values go in as Param, bound when the query runs)"
    )


def compiled_shapes() -> int:
    """How many query shapes are compiled (tests: paging must not add any)."""
    return len(_COMPILED)


def compiled(key: ShapeKey, build: Callable[[], Query[Any, Any] | Proxy[Any, Any]]) -> Compiled:
    """`build()`'s SQL, compiled by Piccolo once per `key` and reused.

    For builder queries on paths that run per request: building a query is
    Python work (about 0.3-0.5 ms, measured) that costs more than a cheap
    indexed read itself. `build` uses :class:`Param` where a value goes
    (:func:`limited` for a limit) and `key` names everything else that shapes
    the SQL (which filters): a name and booleans or enum members, so the
    cache holds one entry per shape whatever clients send. A key of another
    kind is a TypeError; past :data:`MAX_COMPILED` shapes, queries are
    compiled per call and an error is logged. The SQL is still Piccolo's,
    from the Table classes: a renamed column is renamed in it too, and a
    Table that its migrations do not match fails the drift test
    (tests/test_migrations.py).
    """
    found = _COMPILED.get(key)
    if found is None:
        _check_shape_key(key)
        query = build()
        if isinstance(query, Proxy):  # .first(), .output(...): the query inside
            query = query.query
        sql, template = query.querystrings[0].compile_string("postgres")
        found = Compiled(sql, tuple(template))
        if len(_COMPILED) < MAX_COMPILED:
            _COMPILED[key] = found
        else:
            logger.error("compiled_queries.full", key=repr(key), shapes=len(_COMPILED))
    return found
