"""The online-migration helpers' own statements (flowforge.db.online).

Catalog probes that make each step idempotent (is the index there, and valid?
the constraint, validated? the trigger?), the session and per-transaction
settings a migration's connection runs with, and the few DDL templates the
helpers render themselves (an identifier only through
:func:`~flowforge.db.sql.quote.quote_ident`). The statements a migration passes
to the helpers are its own: migrations keep their SQL (they are history).
"""

from __future__ import annotations

from typing import Final, LiteralString

from flowforge.db.sql.quote import quote_ident

# A setting for the session ($3 false) or the current transaction ($3 true):
# set_config() takes bind parameters, SET does not.
SET_CONFIG: Final[LiteralString] = "SELECT set_config($1, $2, $3)"

# An index by name: absent (no row), valid, or left INVALID by an interrupted
# CONCURRENTLY build; `ours` says whether it is an index of the expected table.
INDEX_STATE: Final[LiteralString] = """
SELECT x.indisvalid AS valid, x.indrelid = to_regclass($2) AS ours
FROM pg_index x
WHERE x.indexrelid = to_regclass($1)
"""

# A table's constraint by name: absent (no row), NOT VALID, or validated.
CONSTRAINT_STATE: Final[LiteralString] = """
SELECT c.convalidated AS validated, pg_get_constraintdef(c.oid) AS definition
FROM pg_constraint c
WHERE c.conrelid = to_regclass($1) AND c.conname = $2
"""

TRIGGER_EXISTS: Final[LiteralString] = """
SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2)
"""

DROP_INDEX_CONCURRENTLY: Final[LiteralString] = "DROP INDEX CONCURRENTLY IF EXISTS {index}"
VALIDATE_CONSTRAINT: Final[LiteralString] = "ALTER TABLE {table} VALIDATE CONSTRAINT {constraint}"


def drop_index_concurrently(index: str) -> str:
    """:data:`DROP_INDEX_CONCURRENTLY` for `index` (outside a transaction block)."""
    return DROP_INDEX_CONCURRENTLY.format(index=quote_ident(index))


def validate_constraint(table: str, constraint: str) -> str:
    """:data:`VALIDATE_CONSTRAINT`: a scan under SHARE UPDATE EXCLUSIVE (reads and writes go on)."""
    return VALIDATE_CONSTRAINT.format(table=quote_ident(table), constraint=quote_ident(constraint))
