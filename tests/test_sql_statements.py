"""Every raw SQL statement FlowForge sends lives in the SQL home and is checked by PostgreSQL.

The SQL home is ``flowforge/db/sql/`` (docs/decisions/01-orm-approach.md).
asyncpg's ``prepare`` makes PostgreSQL parse, resolve and type-check a
statement without running it: a column renamed in ``tables.py`` (with its
migration) fails here, not at run time. DDL cannot be prepared, so each DDL
template is rendered with real identifiers and run, in the order partition
maintenance runs them, in a transaction that is rolled back: PostgreSQL then
resolves every table, partition and index it names.

Outside the SQL home no code holds SQL text or builds it by string
formatting; everything else goes through Piccolo's query builder. Inside it,
a statement is a module-level constant typed ``LiteralString`` (or a dict of
them), or is built by a function from such constants.
"""

from __future__ import annotations

import ast
import datetime
import importlib
import itertools
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from flowforge.db.sql import embedded, keyset, online, partitions, quote, runs, session, workflows
from flowforge.jobs.partitions import SPECS, partition_name, period_start
from tests.support import REPO_ROOT

SQL_HOME = "flowforge.db.sql"

# A statement asyncpg can prepare.
STATEMENT = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\s+\S")
# DDL, session and transaction control: run, not prepared.
DDL = re.compile(
    r"^\s*(?:(?:CREATE|ALTER|DROP|ATTACH|DETACH|LOCK|SET|RESET|VACUUM|ANALYZE|TRUNCATE|REINDEX"
    r"|CLUSTER|GRANT|REVOKE|COMMENT|LISTEN|UNLISTEN|NOTIFY|DISCARD|COPY|EXPLAIN|REFRESH|CALL"
    r"|DO|SAVEPOINT|RELEASE)\s+\S|(?:BEGIN|COMMIT|ROLLBACK|START TRANSACTION)\s*(?:;|$))"
)
# SQL words in an f-string's text: string formatting that builds SQL.
SQL_WORD = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|FROM|WHERE|JOIN|RETURNING|VALUES|INTO|CREATE|ALTER|DROP"
    r"|ATTACH|DETACH|PARTITION|LOCK|SET LOCAL|VACUUM|ANALYZE|TRUNCATE|GRANT|REVOKE|ORDER BY"
    r"|GROUP BY|LIMIT|BEGIN|COMMIT|ROLLBACK|DATABASE)\b"
)
# A template's placeholder, filled by the function next to it (identifiers
# through quote_ident, literals through quote_literal).
PLACEHOLDER = re.compile(r"(?<!\{)\{[a-z_]+\}(?!\})")

# SQL text built inside a function, and the enumeration that prepares every variant.
BUILDERS: dict[tuple[str, str], Callable[[], list[str]]] = {
    ("flowforge.db.sql.runs", "list_runs_sql"): lambda: [
        runs.list_runs_sql(*flags) for flags in itertools.product((False, True), repeat=3)
    ],
}
# Raw fragments embedded in builder queries, prepared in a minimal statement.
FRAGMENTS = [
    f"SELECT {workflows.STEP_COUNT}, {workflows.STEPS_OF_WORKFLOW} FROM workflows",
    f"SELECT {workflows.LIMIT_NAME} FROM workflows",
    f"SELECT {workflows.LIMIT_WORKFLOW_COUNT} FROM concurrency_limits",
    "SELECT 1 FROM workflows WHERE "
    + keyset.newer_first_after("workflows").format("now()", "gen_random_uuid()"),
]
# Templates that cannot run in a transaction block, and the test that runs them.
NOT_IN_A_TRANSACTION = {
    "flowforge.db.sql.embedded.CREATE_DATABASE": "tests/test_embedded.py",
    "flowforge.db.sql.online.DROP_INDEX_CONCURRENTLY": "tests/test_online_migrations.py",
}


def module_names() -> list[str]:
    names = []
    for path in sorted((REPO_ROOT / "flowforge").rglob("*.py")):
        parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def in_sql_home(module_name: str) -> bool:
    return module_name == SQL_HOME or module_name.startswith(SQL_HOME + ".")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


def is_sql(text: str) -> bool:
    return bool(STATEMENT.match(text) or DDL.match(text))


def module_path(module_name: str) -> Path:
    path = REPO_ROOT / (module_name.replace(".", "/") + ".py")
    return path if path.exists() else REPO_ROOT / module_name.replace(".", "/") / "__init__.py"


def defined_names(module_name: str) -> set[str]:
    """The names a module assigns at its top level (not the ones it imports)."""
    names = set()
    for node in ast.parse(module_path(module_name).read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        names.update(target.id for target in targets if isinstance(target, ast.Name))
    return names


def named_sql() -> dict[str, str]:
    """``module.NAME`` -> SQL text, for every module-level SQL constant of the package."""
    found: dict[str, str] = {}
    for module_name in module_names():
        module = importlib.import_module(module_name)
        defined = defined_names(module_name)
        for name, value in vars(module).items():
            if not name.isupper() or name.startswith("_") or name not in defined:
                continue  # _NAME: a fragment, prepared inside the statements that embed it
            for index, text in enumerate(_strings(value)):
                if is_sql(text):
                    key = f"{module_name}.{name}" + (
                        f"[{index}]" if isinstance(value, dict) else ""
                    )
                    found[key] = text
    return found


def templates() -> dict[str, str]:
    """DDL and statement templates: rendered by their functions, then run or prepared."""
    return {
        key: text
        for key, text in named_sql().items()
        if DDL.match(text) or PLACEHOLDER.search(text)
    }


def named_statements() -> dict[str, str]:
    """Every statement asyncpg prepares: constants, builders' variants, fragments."""
    found = {
        key: text
        for key, text in named_sql().items()
        if STATEMENT.match(text) and not PLACEHOLDER.search(text)
    }
    for (module_name, function), variants in BUILDERS.items():
        for index, text in enumerate(variants()):
            found[f"{module_name}.{function}[{index}]"] = text
    for index, text in enumerate(FRAGMENTS):
        found[f"fragment[{index}]"] = text
    return found


def test_the_package_defines_the_expected_raw_statements() -> None:
    statements = named_statements()
    ddl = templates()
    outside = [key for key in [*statements, *ddl] if not key.startswith(SQL_HOME + ".")]
    print(
        f"\n{len(statements)} raw statements and {len(ddl)} DDL/statement templates "
        f"in {SQL_HOME}; {len([k for k in outside if not k.startswith('fragment')])} outside"
    )
    # The hot paths and batch jobs that stay raw SQL (docs/decisions/01-orm-approach.md).
    for expected in (
        "flowforge.db.sql.runs.TRIGGER_RUN",
        "flowforge.db.sql.runs.TRANSITION_RUN",
        "flowforge.db.sql.runs.GET_RUN",
        "flowforge.db.sql.api_keys.AUTHENTICATE",
        "flowforge.db.sql.api_keys.REVOKE_GRANTED",
        "flowforge.db.sql.relay.CLAIM_HEADS",
        "flowforge.db.sql.reaper.REAP",
        "flowforge.db.sql.reaper.CLOSE_STEP_ATTEMPTS",
        "flowforge.db.sql.runs.CLOSE_ATTEMPTS",
        "flowforge.db.sql.history.SET_ACTOR",
        "flowforge.db.sql.history.RUN_HISTORY_PAGE",
        "flowforge.db.sql.retention.PRUNE_RUNS",
        "flowforge.db.sql.outbox.INSERT_EVENTS",
    ):
        assert expected in statements
    for expected in (
        "flowforge.db.sql.partitions.CREATE_PARTITION",
        "flowforge.db.sql.partitions.DROP_PARTITION",
        "flowforge.db.sql.session.SET_LOCAL",
    ):
        assert expected in ddl


def test_every_raw_statement_lives_in_the_sql_home() -> None:
    outside = [
        key
        for key in [*named_statements(), *templates()]
        if not key.startswith("fragment") and not key.startswith(SQL_HOME + ".")
    ]
    assert not outside, "raw SQL outside flowforge/db/sql/:\n" + "\n".join(outside)


def test_every_raw_statement_is_typed_as_a_literal_string() -> None:
    # LiteralString (PEP 675): a type checker that enforces it (pyright) refuses
    # any SQL text composed from a non-literal str; mypy records it.
    untyped = []
    for key in [*named_statements(), *templates()]:
        if key.startswith("fragment") or ("[" in key and key.split("[")[0].endswith("_sql")):
            continue
        module_name, name = key.split("[")[0].rsplit(".", 1)
        annotation = importlib.import_module(module_name).__annotations__.get(name)
        if "LiteralString" not in str(annotation):
            untyped.append(f"{key}: {annotation}")
    assert not untyped, "\n".join(untyped)
    assert "LiteralString" in str(runs.list_runs_sql.__annotations__["return"])


def _sql_outside_the_home(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """SQL text (a constant anywhere, or an f-string with SQL words) in a module outside
    the SQL home. Docstrings are prose."""
    docstrings: set[int] = set()
    parts_of_fstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            docstrings.add(id(node.value))
        if isinstance(node, ast.JoinedStr):
            parts_of_fstrings.update(id(child) for child in node.values)  # judged as a whole
    for node in ast.walk(tree):
        if id(node) in docstrings or id(node) in parts_of_fstrings:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if is_sql(node.value):
                yield node.lineno, node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(
                str(part.value) if isinstance(part, ast.Constant) else "{}" for part in node.values
            )
            if is_sql(text) or SQL_WORD.search(text):
                yield node.lineno, text


def test_no_sql_outside_the_sql_home() -> None:
    offenders = []
    for module_name in module_names():
        if in_sql_home(module_name):
            continue
        tree = ast.parse(module_path(module_name).read_text())
        offenders.extend(
            f"{module_name}:{line} {text[:60]!r}" for line, text in _sql_outside_the_home(tree)
        )
    assert not offenders, "SQL outside flowforge/db/sql/ (move it there):\n" + "\n".join(offenders)


def test_the_sql_check_sees_the_old_ways() -> None:
    # What issue 16 found outside the SQL home, as code: each is caught.
    old = ast.parse(
        "NOW = 'SELECT now()'\n"
        "async def create(connection, name, table, bounds):\n"
        "    await connection.execute(f'CREATE TABLE {name} PARTITION OF {table} {bounds}')\n"
        "    await connection.execute(f'SET LOCAL lock_timeout = {2000}')\n"
        "    await connection.execute('SET LOCAL statement_timeout = 0')\n"
        '    await connection.execute(f\'ALTER INDEX "{name}" RENAME TO "{table}"\')\n'
        "    await connection.fetchval('SELECT 1')\n"
        "def columns(alias):\n"
        "    return f', {alias}.payload::text AS payload, {alias}.x <= now() AS due'\n"
        "def where(name):\n"
        "    return f'SELECT 1 FROM pg_database WHERE datname = {name}'\n"
    )
    assert len(list(_sql_outside_the_home(old))) == 7


@pytest.fixture
async def connection(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own (never returned to the pool: the schema is changed below)."""
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def prepare_all(connection: asyncpg.Connection) -> dict[str, Exception]:
    failures: dict[str, Exception] = {}
    for name, statement in named_statements().items():
        try:
            async with connection.transaction():  # a savepoint: one failure aborts only itself
                await connection.prepare(statement)
        except asyncpg.PostgresError as error:
            failures[name] = error
    return failures


async def test_every_raw_statement_prepares_against_the_migrated_schema(
    connection: asyncpg.Connection,
) -> None:
    async with connection.transaction():
        failures = await prepare_all(connection)
    assert not failures, "\n".join(f"{name}: {error}" for name, error in failures.items())


async def test_a_renamed_column_fails_the_statements_that_use_it(
    connection: asyncpg.Connection,
) -> None:
    # What a rename in tables.py plus its migration would do, rolled back.
    transaction = connection.transaction()
    await transaction.start()
    try:
        await connection.execute("ALTER TABLE workflow_runs RENAME COLUMN error TO failure")
        failures = await prepare_all(connection)
    finally:
        await transaction.rollback()
    assert {
        "flowforge.db.sql.runs.TRANSITION_RUN",
        "flowforge.db.sql.runs.GET_RUN",
        "flowforge.db.sql.reaper.REAP",
    } <= set(failures)
    assert all(isinstance(error, asyncpg.UndefinedColumnError) for error in failures.values())


# A period no test writes into: its partitions can be made and dropped freely.
FAR_AHEAD = datetime.datetime(2999, 1, 1, tzinfo=datetime.UTC)


async def run_every_template(connection: asyncpg.Connection) -> list[str]:
    """Each template rendered with real identifiers and run (DDL, in a transaction rolled
    back) or prepared; returns the statements, for the coverage check."""
    ran: list[str] = []

    async def run(statement: str) -> None:
        ran.append(statement)
        await connection.execute(statement)

    transaction = connection.transaction()
    await transaction.start()
    try:
        # A unit of partition maintenance, as jobs.partitions runs it.
        await run(partitions.UTC)
        await run(partitions.NO_STATEMENT_TIMEOUT)
        await run(partitions.lock_timeout(2000))
        for spec in SPECS:
            start = period_start(FAR_AHEAD, spec.period)
            name = partition_name(spec, start)
            default = f"{spec.table}_default"
            # Created with rows waiting in the default partition: out, create, back in.
            await run(partitions.detach_partition(spec.table, default))
            await run(
                partitions.create_partition(
                    spec.table, name, start, period_start(start, spec.period, 1)
                )
            )
            if spec.table in partitions.HISTORY_TRIGGER_OFF:
                await run(partitions.HISTORY_TRIGGER_OFF[spec.table])
                await run(partitions.HISTORY_TRIGGER_ON[spec.table])
            await run(partitions.attach_default_partition(spec.table, default))
            indexes = await connection.fetch(partitions.PARTITION_INDEXES, name)
            for number, row in enumerate(indexes):
                await run(partitions.rename_index(row["child"], f"{name}_probe_{number}"))
            # Retired: locked, then detached or dropped.
            await run(partitions.lock_partition(name))
            await run(partitions.detach_partition(spec.table, name))
            await run(partitions.drop_partition(name))
        # An online migration's VALIDATE (flowforge.db.online).
        await run(online.validate_constraint("users", "users_email_format"))
    finally:
        await transaction.rollback()
    # A transaction behind a pooler: BEGIN with its settings (a custom one
    # too, with a quote in its value), and the ends.
    await run(session.begin_statement({"statement_timeout": "30000", "flowforge.probe": "it's"}))
    await run(session.ROLLBACK)
    await run(session.BEGIN)
    await run(session.COMMIT)
    # The embedded server's probe (a statement: prepared).
    exists = embedded.database_exists("postgres")
    ran.append(exists)
    await connection.prepare(exists)
    return ran


def template_pattern(template: str) -> re.Pattern[str]:
    pattern = re.escape(template.replace("{{", "\0").replace("}}", "\1"))
    pattern = re.sub(r"\\\{[a-z_]+\\\}", ".+?", pattern)
    return re.compile(pattern.replace("\0", r"\{").replace("\1", r"\}"))


async def test_every_ddl_template_runs_against_the_migrated_schema(
    connection: asyncpg.Connection,
) -> None:
    ran = [
        part for statement in await run_every_template(connection) for part in statement.split("; ")
    ]
    not_run = [
        key
        for key, template in templates().items()
        if key not in NOT_IN_A_TRANSACTION
        and not any(template_pattern(template).fullmatch(statement) for statement in ran)
    ]
    assert not not_run, "templates not rendered and run here (add them):\n" + "\n".join(not_run)


async def test_ddl_is_resolved_not_only_parsed(connection: asyncpg.Connection) -> None:
    # A partition that does not exist fails: PostgreSQL resolved the name.
    async with connection.transaction():
        with pytest.raises(asyncpg.UndefinedTableError):
            await connection.execute(partitions.lock_partition("outbox_p29990101"))


async def test_quoting_agrees_with_postgresql(connection: asyncpg.Connection) -> None:
    reserved = [
        row["word"]
        for row in await connection.fetch("SELECT word FROM pg_get_keywords() WHERE catcode <> 'U'")
    ]
    # Every keyword the server reserves is quoted (the list also covers newer servers').
    assert not [word for word in reserved if quote.quote_ident(word) == word]
    names = ["outbox", "run_step_logs_p202601", "Outbox", "a b", 'x"y', "1st", "_x$", "name"]
    for name in names:
        assert quote.quote_ident(name) == await connection.fetchval("SELECT quote_ident($1)", name)
    for text in ["it's", "a\\b", "2026-01-01T00:00:00+00:00", ""]:
        assert quote.quote_literal(text) == await connection.fetchval(
            "SELECT quote_literal($1::text)", text
        )
