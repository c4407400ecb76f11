"""The SQL home: every raw statement FlowForge sends, named, one module per aggregate or concern.

Most queries are Piccolo's query builder, written next to the domain code that
runs them (``flowforge/domain/``, ``flowforge/outbox/status.py``...). The
statements here are the ones the builder cannot say, or that the benchmark
forbids it to (docs/decisions/01-orm-approach.md): data-modifying CTEs that
write a change and its event in one round trip, batch jobs, catalog probes,
partition DDL, session and transaction control. Keeping them in one folder
means one place to read every statement the database sees besides the
builder's, and one test (tests/test_sql_statements.py) that has PostgreSQL
parse and resolve each of them against the migrated schema: statements are
prepared, DDL templates rendered with real identifiers and run in a
transaction that is rolled back.

Rules, kept by that test:

* A statement is a module-level constant typed ``Final[LiteralString]`` (or a
  dict of them, one per table), or is built by a function here from such
  constants; values are always bind parameters.
* Nothing outside this folder builds SQL by string formatting. An identifier
  that is not written in the text (a partition's name, a Table's column
  names) enters SQL only through :func:`flowforge.db.sql.quote.quote_ident`;
  a literal in DDL (where bind parameters cannot go) only through
  :func:`flowforge.db.sql.quote.quote_literal`.
* Like the rest of ``flowforge/db/``, these modules import only ``core/`` and
  ``db/``: the event contract they build payloads from is
  :mod:`flowforge.core.events`.

Migrations (``piccolo_migrations/``) keep their own SQL: they are history,
run once in order, and tested by running them.
"""
