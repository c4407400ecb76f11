"""The embedded server's statements (flowforge.db.embedded), sent through psql while it
starts: does the database exist, create it.
"""

from __future__ import annotations

from typing import Final, LiteralString

from flowforge.db.sql.quote import quote_ident, quote_literal

DATABASE_EXISTS: Final[LiteralString] = "SELECT 1 FROM pg_database WHERE datname = {database}"
# Not in a transaction block (PostgreSQL refuses it there): tests/test_embedded.py runs it.
CREATE_DATABASE: Final[LiteralString] = "CREATE DATABASE {database}"


def database_exists(database: str) -> str:
    return DATABASE_EXISTS.format(database=quote_literal(database))


def create_database(database: str) -> str:
    return CREATE_DATABASE.format(database=quote_ident(database))
