"""The one way text that is not written in a statement becomes SQL.

Identifiers (a partition's name made from a date, a Table's column names)
through :func:`quote_ident`; literals where a bind parameter cannot go (DDL:
a partition's bounds) through :func:`quote_literal`. Both do what
PostgreSQL's own ``quote_ident()`` and ``quote_literal()`` do, so a plain
lowercase name stays as it reads (``run_step_logs_p202601``) and the SQL
texts are the ones a person would write; tests/test_sql_statements.py
compares them with the server's functions.
"""

from __future__ import annotations

import re
from typing import Final, LiteralString

from piccolo.columns import Column

_PLAIN: Final = re.compile(r"[a-z_][a-z0-9_]*")

# PostgreSQL's keywords that are not "unreserved" (pg_get_keywords() with
# catcode <> 'U'): as an identifier, each needs quotes. PostgreSQL 15 to 18;
# quoting one that a server does not reserve is harmless.
KEYWORDS: Final = frozenset(
    """
    all analyse analyze and any array as asc asymmetric authorization between bigint binary
    bit boolean both case cast char character check coalesce collate collation column
    concurrently constraint create cross current_catalog current_date current_role
    current_schema current_time current_timestamp current_user dec decimal default
    deferrable desc distinct do else end except exists extract false fetch float for foreign
    freeze from full grant greatest group grouping having ilike in initially inner inout int
    integer intersect interval into is isnull join json json_array json_arrayagg json_exists
    json_object json_objectagg json_query json_scalar json_serialize json_table json_value
    lateral leading least left like limit localtime localtimestamp merge_action national
    natural nchar none normalize not notnull null nullif numeric offset on only or order out
    outer overlaps overlay placing position precision primary real references returning
    right row select session_user setof similar smallint some substring symmetric
    system_user table tablesample then time timestamp to trailing treat trim true union
    unique user using values varchar variadic verbose when where window with xmlattributes
    xmlconcat xmlelement xmlexists xmlforest xmlnamespaces xmlparse xmlpi xmlroot
    xmlserialize xmltable
    """.split()  # noqa: SIM905 - a list a reader can compare with pg_get_keywords()
)


def quote_ident(name: str) -> str:
    """`name` as an SQL identifier: as is when PostgreSQL would read it back
    unchanged, else double-quoted (embedded quotes doubled)."""
    if _PLAIN.fullmatch(name) and name not in KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """`text` as an SQL string literal: quotes doubled, and with a backslash the
    ``E'...'`` form (as PostgreSQL's ``quote_literal()``), right whatever
    ``standard_conforming_strings`` is."""
    if "\\" in text:
        return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + text.replace("'", "''") + "'"


def column_list(*columns: Column, alias: LiteralString = "") -> LiteralString:
    """``a, b, c`` (or ``x.a, x.b``) for raw SQL, from Table columns.

    Identifiers from the Table classes, never client text: a column renamed
    in ``tables.py`` renames it here, and tests/test_sql_statements.py
    prepares every statement built with it against the migrated schema.
    Typed ``LiteralString`` though the names are read from the Tables: they
    are the code's own, like a literal.
    """
    prefix: LiteralString = f"{alias}." if alias else ""
    return ", ".join(f"{prefix}{quote_ident(column._meta.db_column_name)}" for column in columns)
