"""The keyset condition of the builder's pages (flowforge.db.builder.page_after).

``(created_at, id) < (cursor)`` as a row comparison, which PostgreSQL uses as
one index condition on the ``(…, created_at, id)`` indexes. A fragment for
the query builder's ``WhereRaw``: its ``{}`` are the builder's placeholders
for the cursor's two values.
"""

from __future__ import annotations

from typing import Final, LiteralString

from flowforge.db.sql.quote import quote_ident

NEWER_FIRST_AFTER: Final[LiteralString] = "({table}.created_at, {table}.id) < ({{}}, {{}})"


def newer_first_after(table: str) -> str:
    """:data:`NEWER_FIRST_AFTER` on `table` (a Table's name)."""
    return NEWER_FIRST_AFTER.format(table=quote_ident(table))
