"""Layers point one way: foundation -> database -> domain -> relay / commands / HTTP.

Read from the source (every ``import``, also inside functions), so a new
import that points the wrong way fails here rather than in a review:

* ``foundation``: settings, errors, JSON and log helpers - import nothing of ours
  but each other.
* ``db`` (``flowforge.db``): the engine, the Tables, readiness. The one edge up is
  ``piccolo_app`` registering the commands package (Piccolo's app config is
  where commands are declared).
* ``domain`` (the other ``flowforge.*`` modules): users, keys, workflows, runs,
  the outbox and the event contract, housekeeping.
* ``relay`` (``flowforge.relay``): the outbox relay process (Redis).
* ``api`` (``flowforge.api``, ``flowforge.main``): the HTTP process.
* ``commands`` (``flowforge.commands``): the only code that prints or exits.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from tests.support import REPO_ROOT

PACKAGE = REPO_ROOT / "flowforge"

FOUNDATION = {
    "flowforge.settings",
    "flowforge.errors",
    "flowforge.jsonutil",
    "flowforge.logs",
    "flowforge.metrics",
}

# layer -> the layers it may import.
ALLOWED: dict[str, set[str]] = {
    "foundation": {"foundation"},
    "db": {"foundation", "db"},
    "domain": {"foundation", "db", "domain"},
    "relay": {"foundation", "db", "domain", "relay"},
    "api": {"foundation", "db", "domain", "api"},
    "commands": {"foundation", "db", "domain", "relay", "commands"},
}
# Deliberate exceptions, each with its reason.
ALLOWED_EDGES = {
    # Piccolo declares an app's commands in its AppConfig.
    ("flowforge.db.piccolo_app", "flowforge.commands"),
}

# Code outside flowforge.commands that may print or exit, and why.
MAY_PRINT_OR_EXIT = {
    # Start-up guards: a bad configuration stops any entry point (CLI, uvicorn)
    # with one readable line and exit 2, before a command or the app exists.
    "flowforge.settings",
    "flowforge.db.engine",
    # `python -m flowforge.db.embedded status|stop` (make db-status / db-stop).
    "flowforge.db.embedded",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    if module in FOUNDATION:
        return "foundation"
    for prefix, name in (
        ("flowforge.db", "db"),
        ("flowforge.relay", "relay"),
        ("flowforge.api", "api"),
        ("flowforge.main", "api"),
        ("flowforge.commands", "commands"),
    ):
        if module == prefix or module.startswith(prefix + "."):
            return name
    return "domain"


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


def test_imports_point_one_way() -> None:
    wrong = []
    for module, targets in import_graph().items():
        for target in targets:
            edge_ok = layer(target) in ALLOWED[layer(module)] or (module, target) in ALLOWED_EDGES
            if not edge_ok:
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
    # module and, through readiness, the app registry with its commands),
    # without building the app (which would resolve the database).
    code = (
        "import sys, flowforge.api.app, flowforge.db.readiness, flowforge.db.registry; "
        "flowforge.db.registry.APP_REGISTRY.get_app_config('flowforge'); "
        "print(sorted(m for m in sys.modules "
        "if m.split('.')[0] == 'redis' or m.startswith('flowforge.relay')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert "flowforge.commands" in import_graph()["flowforge.db.piccolo_app"]
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
    assert not picture["foundation"]
    assert picture["db"] <= {"foundation", "commands"}
