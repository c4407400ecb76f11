"""Layers point one way, and each layer is a folder of ``flowforge/``.

Read from the source (every ``import``, also inside functions), so a new
import that points the wrong way fails here rather than in a review. From the
bottom up:

* ``core/``: settings, errors, logs, metrics, JSON, the event contract - import
  nothing else of ours.
* ``db/``: the engine, the Tables, replicas, readiness, builder helpers, the
  embedded server, and ``db/sql/``: every raw statement (the SQL home).
* ``outbox/``: the outbox's one writer, its status.
* ``domain/``: one module per aggregate (users, API keys, workflows, runs), who
  is calling (principal), keyset pages.
* ``jobs/``: batch jobs that commit per batch: reaper, retention, partitions.
* ``api/`` (the HTTP process), ``relay/`` (the outbox relay process) and
  ``commands/`` (the only code that prints or exits).
* Entry points at the package root: ``main`` (uvicorn), ``piccolo_app`` (the
  Piccolo app: tables and commands) and ``piccolo_conf`` (the CLI's engine).

No exception: an edge not in ``ALLOWED`` fails.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from tests.support import REPO_ROOT

PACKAGE = REPO_ROOT / "flowforge"

# layer (a folder of flowforge/, or an entry-point module at its root) -> the
# layers it may import.
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "db": {"core", "db"},
    "outbox": {"core", "db", "outbox"},
    "domain": {"core", "db", "outbox", "domain"},
    "jobs": {"core", "db", "outbox", "jobs"},
    "relay": {"core", "db", "outbox", "jobs", "relay"},
    "api": {"core", "db", "outbox", "domain", "api"},
    "commands": {"core", "db", "outbox", "domain", "jobs", "relay", "commands"},
    "main": {"api"},
    "piccolo_app": {"core", "db", "commands"},
    # The CLI's configuration: Piccolo's CLI has no hook but the import of its
    # conf (the lock for its own migration commands, unknown commands' exit status).
    "piccolo_conf": {"core", "db", "commands"},
    "flowforge": set(),  # the package's own __init__
}

# Code outside flowforge.commands that may print or exit, and why.
MAY_PRINT_OR_EXIT = {
    # Start-up guards: a bad configuration stops any entry point (CLI, uvicorn)
    # with one readable line and exit 2, before a command or the app exists.
    "flowforge.core.settings",
    "flowforge.db.engine",
    # `python -m flowforge.db.embedded status|stop` (make db-status / db-stop).
    "flowforge.db.embedded",
    # A raw migration's progress lines, printed on the migrate command's output
    # (benchmarks/migrations.py reads them per migration step).
    "flowforge.db.online",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    """flowforge.<folder>.* is <folder>; a module at the root is its own layer."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def modules() -> dict[str, ast.Module]:
    return {
        module_name(path): ast.parse(path.read_text(), str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


KNOWN = set(modules())


def imports(tree: ast.Module) -> set[str]:
    """Every flowforge module a module imports (``from flowforge import x`` is flowforge.x)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            for alias in node.names:
                if f"{node.module}.{alias.name}" in KNOWN:
                    found.add(f"{node.module}.{alias.name}")
    return {name for name in found if name.startswith("flowforge.")}


def import_graph() -> dict[str, set[str]]:
    return {name: imports(tree) for name, tree in modules().items()}


def test_every_module_is_in_a_layer() -> None:
    """A new folder or root module must be placed in ALLOWED before it can import."""
    unplaced = sorted(module for module in modules() if layer(module) not in ALLOWED)
    assert not unplaced, f"modules outside every layer (add their folder to ALLOWED): {unplaced}"


def test_imports_point_one_way() -> None:
    wrong = []
    for module, targets in import_graph().items():
        for target in targets:
            if layer(target) not in ALLOWED[layer(module)]:
                wrong.append(f"{module} ({layer(module)}) -> {target} ({layer(target)})")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_the_relay_store_does_not_know_the_broker() -> None:
    graph = import_graph()
    assert "flowforge.relay.publishers" not in graph["flowforge.relay.store"]
    assert "flowforge.relay.event" in graph["flowforge.relay.store"]


def test_only_commands_print_or_exit() -> None:
    offenders = []
    for module, tree in modules().items():
        if layer(module) == "commands" or module in MAY_PRINT_OR_EXIT:
            continue
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                name = node.func.id if node.func.id in {"print", "exit", "quit"} else None
            if isinstance(node, ast.Attribute) and node.attr == "exit":
                name = "sys.exit"
            if isinstance(node, ast.Name) and node.id == "SystemExit":
                name = "SystemExit"
            if name is not None:
                offenders.append(f"{module}:{node.lineno} {name}")
    assert not offenders, "printing or exiting outside flowforge.commands:\n" + "\n".join(offenders)


def test_the_api_process_imports_neither_the_relay_nor_redis() -> None:
    # A fresh interpreter: what `uvicorn flowforge.main:app` imports (the app
    # module and readiness, which reads every app's migration files), without
    # building the app (which would resolve the database). Neither the relay,
    # nor Redis, nor the commands (Piccolo's app config declares them).
    code = (
        "import sys, flowforge.api.app, flowforge.db.readiness; "
        "flowforge.db.readiness.expected_migrations(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'redis' "
        "or m.startswith(('flowforge.relay', 'flowforge.commands', 'flowforge.piccolo_app'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert "flowforge.commands" in import_graph()["flowforge.piccolo_app"]
    assert result.stdout.strip() == "[]", result.stdout


# One way to reach the connection (docs/decisions/01-orm-approach.md): a data function runs
# in its caller's transaction - builder queries pick it up, raw statements use
# DB.require_transaction().connection. No autocommit DB.fetch, no connection
# handed around as an argument, no connection taken from the pool by hand.
# Only the engine, which implements all of that, is exempt.
CONNECTION_PLUMBING = {"flowforge.db.engine"}
# Sessions of their own (not the pool's, not a transaction's), and why.
OWN_CONNECTIONS = {
    # LISTEN needs a session of its own for as long as the relay runs.
    "flowforge.relay.listener",
    # The migration lock is a session advisory lock, held while Piccolo migrates.
    "flowforge.commands.migrate",
    # A raw migration's session, outside Piccolo's transaction: CONCURRENTLY
    # builds and one transaction per backfill batch cannot run inside one.
    "flowforge.db.online",
}


def connection_misuse(module: str, tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        where = f"{module}:{getattr(node, 'lineno', '?')}"
        is_name_attribute = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        if (
            is_name_attribute
            and node.value.id == "DB"
            and node.attr in {"fetch", "pool", "acquire"}
        ):
            found.append(f"{where} DB.{node.attr}")
        if isinstance(node, ast.Attribute) and node.attr == "get_new_connection":
            found.append(f"{where} get_new_connection")
        if module in OWN_CONNECTIONS:
            continue
        if is_name_attribute and node.value.id == "asyncpg" and node.attr == "connect":
            found.append(f"{where} asyncpg.connect")
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args
            for argument in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
                if argument.arg in {"connection", "conn", "connection_"}:
                    found.append(f"{where} {node.name}({argument.arg})")
    return found


def test_data_functions_reach_the_connection_one_way() -> None:
    offenders = []
    for module, tree in modules().items():
        if module not in CONNECTION_PLUMBING:
            offenders.extend(connection_misuse(module, tree))
    assert not offenders, (
        "reach the connection through the caller's transaction "
        "(DB.require_transaction().connection), not:\n" + "\n".join(offenders)
    )


def test_the_connection_rule_sees_the_old_ways() -> None:
    # The three ways issue 10 found, as code: each is caught.
    old = ast.parse(
        "async def claim_batch(connection, n):\n"
        "    return await connection.fetch('SELECT 1')\n"
        "async def health():\n"
        "    return await DB.fetch('SELECT 1')\n"
        "async def own():\n"
        "    async with DB.pool.acquire() as c:\n"
        "        pass\n"
    )
    assert len(connection_misuse("flowforge.example", old)) == 3


def layer_picture() -> dict[str, set[str]]:
    """Which layer imports which (for docs and reports)."""
    picture: dict[str, set[str]] = defaultdict(set)
    for module, targets in import_graph().items():
        for target in targets:
            if layer(target) != layer(module):
                picture[layer(module)].add(layer(target))
    return picture


def test_the_layer_picture() -> None:
    picture = layer_picture()
    print("\n" + "\n".join(f"{k} -> {', '.join(sorted(v))}" for k, v in sorted(picture.items())))
    assert "api" not in picture["relay"] and "relay" not in picture["api"]
    assert not picture["core"]
    assert picture["db"] == {"core"}
