"""Every raw SQL statement FlowForge defines is prepared against the migrated schema.

asyncpg's ``prepare`` makes PostgreSQL parse, resolve and type-check a
statement without running it: a column renamed in ``tables.py`` (with its
migration) fails here, not at run time. Raw SQL lives only in named places:
module-level constants (``NAME = "SELECT ..."``, or a dict of them), or the
statement builders listed in ``BUILDERS``, and a test keeps it that way.
Everything else goes through Piccolo's query builder.
"""

from __future__ import annotations

import ast
import importlib
import itertools
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from flowforge.domain import runs, workflows
from tests.support import REPO_ROOT

STATEMENT = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\s+\S")

# Modules whose SQL-looking text is not sent through asyncpg, and why.
NOT_ASYNCPG = {
    # psql over the embedded server's socket while it starts; the database name
    # is checked against an identifier pattern first.
    "flowforge.db.embedded",
}
# SQL text built inside a function, and the enumeration that prepares every variant.
BUILDERS = {
    ("flowforge.domain.runs", "_list_runs_sql"): lambda: [
        runs._list_runs_sql(*flags) for flags in itertools.product((False, True), repeat=3)
    ],
}
# Functions that build fragments of the statements above (each statement that
# embeds one is prepared): the outbox INSERT of a data-modifying CTE.
FRAGMENT_BUILDERS = {("flowforge.outbox.writer", "insert_from")}
# Raw fragments embedded in builder queries, prepared in a minimal statement.
FRAGMENTS = [
    f"SELECT {workflows.STEP_COUNT}, {workflows.STEPS_OF_WORKFLOW} FROM workflows",
]
# Inline SQL that is not a statement of the schema: the listener's liveness ping.
INLINE_ALLOWED = {("flowforge.relay.listener", "SELECT 1")}


def module_names() -> list[str]:
    names = []
    for path in sorted((REPO_ROOT / "flowforge").rglob("*.py")):
        parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


def named_statements() -> dict[str, str]:
    """``module.NAME`` -> statement, for every module-level SQL constant and builder."""
    found: dict[str, str] = {}
    for module_name in module_names():
        if module_name in NOT_ASYNCPG:
            continue
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if not name.isupper() or name.startswith("_"):
                continue  # _NAME: a fragment, prepared inside the statements that embed it
            for index, text in enumerate(_strings(value)):
                if STATEMENT.match(text):
                    key = f"{module_name}.{name}" + (
                        f"[{index}]" if isinstance(value, dict) else ""
                    )
                    found[key] = text
    for (module_name, function), variants in BUILDERS.items():
        for index, text in enumerate(variants()):
            found[f"{module_name}.{function}[{index}]"] = text
    for index, text in enumerate(FRAGMENTS):
        found[f"fragment[{index}]"] = text
    return found


def test_the_package_defines_the_expected_raw_statements() -> None:
    statements = named_statements()
    print(f"\n{len(statements)} raw statements")
    # The hot paths and batch jobs that stay raw SQL (docs/decisions/01-orm-approach.md).
    for expected in (
        "flowforge.domain.runs.TRIGGER_RUN",
        "flowforge.domain.runs.TRANSITION_RUN",
        "flowforge.domain.runs.GET_RUN",
        "flowforge.domain.api_keys.AUTHENTICATE",
        "flowforge.domain.api_keys.REVOKE_GRANTED",
        "flowforge.relay.store.CLAIM_HEADS",
        "flowforge.jobs.reaper.REAP",
        "flowforge.jobs.retention.PRUNE_RUNS",
        "flowforge.outbox.writer.INSERT_EVENTS",
    ):
        assert expected in statements


def test_every_raw_statement_is_typed_as_a_literal_string() -> None:
    # LiteralString (PEP 675): a type checker that enforces it (pyright) refuses
    # any SQL text composed from a non-literal str; mypy records it.
    untyped = []
    for key in named_statements():
        if key.startswith("fragment") or ("[" in key and key.split("[")[0].endswith("_sql")):
            continue
        module_name, name = key.split("[")[0].rsplit(".", 1)
        annotation = importlib.import_module(module_name).__annotations__.get(name)
        if "LiteralString" not in str(annotation):
            untyped.append(f"{key}: {annotation}")
    assert not untyped, "\n".join(untyped)
    assert "LiteralString" in str(runs._list_runs_sql.__annotations__["return"])


def _inline_sql(module_name: str, tree: ast.Module) -> Iterator[tuple[int, str]]:
    """SQL text that is not a module-level constant (nor in a listed builder)."""
    top_level_values: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            top_level_values.update(id(child) for child in ast.walk(node.value))
    builders = {
        function for module, function in [*BUILDERS, *FRAGMENT_BUILDERS] if module == module_name
    }
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in builders:
            skipped.update(id(child) for child in ast.walk(node))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            skipped.add(id(node.value))  # docstrings
        if isinstance(node, ast.JoinedStr):
            skipped.update(id(child) for child in node.values)  # judged as a whole
    for node in ast.walk(tree):
        if id(node) in top_level_values or id(node) in skipped:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.JoinedStr) and isinstance(node.values[0], ast.Constant):
            text = str(node.values[0].value)
        else:
            continue
        if STATEMENT.match(text) and (module_name, text) not in INLINE_ALLOWED:
            yield node.lineno, text


def test_raw_sql_lives_only_in_named_constants() -> None:
    inline = []
    for module_name in module_names():
        if module_name in NOT_ASYNCPG:
            continue
        path = REPO_ROOT / (module_name.replace(".", "/") + ".py")
        if not path.exists():
            path = REPO_ROOT / module_name.replace(".", "/") / "__init__.py"
        tree = ast.parse(path.read_text())
        inline.extend(
            f"{module_name}:{line} {text[:60]!r}" for line, text in _inline_sql(module_name, tree)
        )
    assert not inline, "SQL outside a named module-level constant:\n" + "\n".join(inline)


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
        "flowforge.domain.runs.TRANSITION_RUN",
        "flowforge.domain.runs.GET_RUN",
        "flowforge.jobs.reaper.REAP",
    } <= set(failures)
    assert all(isinstance(error, asyncpg.UndefinedColumnError) for error in failures.values())
