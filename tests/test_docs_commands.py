"""The docs' commands are real, and run where they can.

Read from the README and every page of the docs site (docs/, and
benchmarks/README.md, which the site includes), inside code only (fenced
blocks and inline code), so prose cannot trip them:

* every ``make <target>`` exists (``make -n`` accepts it), and every target of
  the Makefile is documented;
* every ``flowforge <command>`` / ``piccolo flowforge <command>`` is a command
  of FlowForge's, every ``--option`` after it one of that command's options,
  and the commands page lists exactly the commands ``flowforge --help`` prints;
* every ``piccolo migrations <command>`` is one of Piccolo's;
* every file or folder of the repository they name exists, and every dotted
  ``flowforge.*`` name imports;
* the settings page lists exactly the settings of flowforge/core/settings.py,
  each with its default;
* the examples of "Using it from other code" run: the route serves a request
  through the real app, the function outside FastAPI moves a run.

The README's curl session runs in tests/test_readme_session.py.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from fastapi import Depends

from flowforge.db.engine import DB
from flowforge.db.tables import Role
from flowforge.domain import workflows
from tests.api.conftest import make_caller
from tests.support import REPO_ROOT

DOCS = REPO_ROOT / "docs"
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
INLINE = re.compile(r"`([^`\n]+)`")
MAKE = re.compile(r"(?:^|[\s;&|(])make ([a-z][\w-]*)")
FLOWFORGE = re.compile(r"(?:^|[\s;&|(/])flowforge ([a-z][\w-]*)([^\n`|#)]*)")
PICCOLO_MIGRATIONS = re.compile(r"\bpiccolo migrations ([a-z][\w-]*)")
OPTION = re.compile(r"(?:^|\s)--([a-z][\w-]*)")
SETTING_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]*)` \| ([^|]*) \|", re.MULTILINE)


def pages() -> list[Path]:
    found = [REPO_ROOT / "README.md", REPO_ROOT / "benchmarks" / "README.md"]
    return found + sorted(DOCS.rglob("*.md"))


def code(text: str) -> list[str]:
    """The code of a Markdown text: fenced blocks, then inline spans outside them."""
    blocks = FENCE.findall(text)
    return blocks + INLINE.findall(FENCE.sub("", text))


def snippets() -> Iterator[tuple[str, str]]:
    """(page, code) for every piece of code in the docs."""
    for path in pages():
        for piece in code(path.read_text()):
            yield str(path.relative_to(REPO_ROOT)), piece


def makefile_targets() -> set[str]:
    makefile = (REPO_ROOT / "Makefile").read_text()
    [phony] = re.findall(r"^\.PHONY: (.*)$", makefile, flags=re.MULTILINE)
    return set(phony.split())


def test_the_code_readers_see_what_they_check() -> None:
    """The patterns can fail: each finds its example, and prose is not code."""
    text = "Run `make nothing` and\n```sh\nflowforge reap --dry_run --nope\n```\nmake a client"
    pieces = code(text)
    assert [m.group(1) for piece in pieces for m in MAKE.finditer(piece)] == ["nothing"]
    [(command, rest)] = [m.groups() for piece in pieces for m in FLOWFORGE.finditer(piece)]
    assert (command, OPTION.findall(rest)) == ("reap", ["dry_run", "nope"])
    assert "nothing" not in makefile_targets()


def test_every_make_target_the_docs_name_exists() -> None:
    targets = makefile_targets()
    named: dict[str, str] = {}
    for page, piece in snippets():
        for match in MAKE.finditer(piece):
            named.setdefault(match.group(1), page)
    unknown = {target: page for target, page in named.items() if target not in targets}
    assert not unknown, f"make targets the docs name but the Makefile lacks: {unknown}"
    for target in sorted(named):
        result = subprocess.run(
            ["make", "-n", target], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"make -n {target}: {result.stderr}"


def test_every_make_target_is_documented() -> None:
    named = {match.group(1) for _, piece in snippets() for match in MAKE.finditer(piece)}
    undocumented = makefile_targets() - named
    assert not undocumented, f"Makefile targets no doc page names: {sorted(undocumented)}"


def flowforge_commands() -> dict[str, set[str]]:
    """Every command name (aliases too) -> its options."""
    from flowforge.commands import COMMANDS

    return {
        name: set(inspect.signature(function).parameters)
        for function, aliases in COMMANDS
        for name in (function.__name__, *aliases)
    }


def test_every_flowforge_command_and_option_the_docs_name_exists() -> None:
    commands = flowforge_commands()
    problems = []
    for page, piece in snippets():
        for match in FLOWFORGE.finditer(piece):
            command, rest = match.groups()
            if command not in commands:
                problems.append(f"{page}: `flowforge {command}` is not a command")
                continue
            for option in OPTION.findall(rest):
                if option != "help" and option not in commands[command]:
                    problems.append(f"{page}: `flowforge {command}` has no option --{option}")
    assert not problems, "\n".join(problems)


def test_the_commands_page_lists_what_flowforge_help_prints() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "flowforge"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert result.returncode == 0, result.stderr
    printed = set(re.findall(r"^  ([a-z_]+) ", result.stdout, flags=re.MULTILINE))
    assert printed, result.stdout
    page = (DOCS / "commands.md").read_text()
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", page, flags=re.MULTILINE))
    assert listed == printed


def test_every_piccolo_migrations_command_the_docs_name_exists() -> None:
    from piccolo.apps.migrations.piccolo_app import APP_CONFIG

    known = {
        name
        for command in APP_CONFIG.commands
        for name in (command.callable.__name__, *command.aliases)
    }
    named = {
        (page, match.group(1))
        for page, piece in snippets()
        for match in PICCOLO_MIGRATIONS.finditer(piece)
    }
    assert named, "the docs name no piccolo migrations command: is the pattern stale?"
    unknown = sorted((page, name) for page, name in named if name not in known)
    assert not unknown, unknown


def documented_default(cell: str) -> str | None:
    """The default a settings row states: one inline value, "unset", or None (prose)."""
    cell = cell.strip()
    if cell.startswith("unset"):
        return "unset"
    single = re.fullmatch(r"`([^`]+)`", cell)
    return single.group(1) if single else None


def rendered(value: Any) -> str:
    """A setting's default as the docs write it: 10.0 -> 10, True -> true."""
    if value is None:
        return "unset"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_the_settings_page_lists_exactly_the_settings_with_their_defaults() -> None:
    from flowforge.core.settings import Settings

    fields = {
        field.validation_alias: field
        for field in Settings.model_fields.values()
        if isinstance(field.validation_alias, str)
    }
    rows = dict(SETTING_ROW.findall((DOCS / "settings.md").read_text()))
    assert set(rows) == set(fields), (
        f"only in the docs: {sorted(set(rows) - set(fields))}; "
        f"only in settings.py: {sorted(set(fields) - set(rows))}"
    )
    wrong = {}
    for name, cell in rows.items():
        stated = documented_default(cell)
        field = fields[name]
        if stated is None or field.default_factory is not None:
            continue
        default = field.default
        secret = getattr(default, "get_secret_value", None)
        actual = rendered(secret() if secret else default)
        if stated != actual:
            wrong[name] = (stated, actual)
    assert not wrong, f"settings whose documented default is not the code's: {wrong}"


PATH = re.compile(
    r"(?<![\w./-])((?:flowforge|tests|benchmarks|deploy|piccolo_migrations|docs|\.ci)/[\w/.*-]*[\w/*])"
)
MODULE = re.compile(r"(?<![\w.@/-])(flowforge(?:\.\w+)+)")
# Generated by a test run, not kept in the repository.
GENERATED = ("tests/artifacts/", "docs/generated/")
# Dotted names that are not Python paths of the checkout: a logger, the
# package the wheel maps piccolo_migrations/ to (setup.py), and the PostgreSQL
# setting run history's triggers read (docs/decisions/14-run-history.md).
NOT_MODULES = {"flowforge.access", "flowforge.migrations", "flowforge.actor"}


def test_every_path_and_module_the_docs_name_exists() -> None:
    """Files and folders (`flowforge/jobs/reaper.py`) exist; dotted names
    (`flowforge.domain.runs.trigger_run`) import."""
    import importlib

    problems = set()
    for page, piece in snippets():
        for path in PATH.findall(piece):
            if not path.startswith(GENERATED) and not any(REPO_ROOT.glob(path)):
                problems.add(f"{page}: {path} does not exist")
        for dotted in MODULE.findall(piece):
            if dotted in NOT_MODULES:
                continue
            parts = dotted.split(".")
            for cut in range(len(parts), 0, -1):
                try:
                    found: Any = importlib.import_module(".".join(parts[:cut]))
                    break
                except ModuleNotFoundError:
                    continue
            for attribute in parts[cut:]:
                found = getattr(found, attribute, None)
            if found is None:
                problems.add(f"{page}: {dotted} is not importable")
    assert not problems, "\n".join(sorted(problems))


def using_from_code_examples() -> list[str]:
    page = (DOCS / "using-from-code.md").read_text()
    examples = re.findall(r"^```python\n(.*?)^```", page, flags=re.DOTALL | re.MULTILINE)
    assert len(examples) == 2, "using-from-code.md: the route, then the function"
    return examples


def example_module(source: str, name: str) -> ModuleType:
    module = ModuleType(name)
    # dont_inherit: not this file's `from __future__ import annotations` (the
    # example's annotations stay objects, as in a module of its own).
    exec(
        compile(source, f"docs/using-from-code.md:{name}", "exec", dont_inherit=True),
        module.__dict__,
    )
    return module


@pytest.mark.usefixtures("db")
async def test_the_route_example_serves_a_request() -> None:
    from flowforge.api.app import create_app
    from flowforge.api.deps import Transaction, presented_key

    example = example_module(using_from_code_examples()[0], "route_example")
    for route in example.router.routes:
        hints = inspect.signature(route.endpoint).parameters.values()
        assert all(p.annotation is not Transaction for p in hints), "routes never take it"
    app = create_app()
    app.include_router(example.router, prefix="/api/v1", dependencies=[Depends(presented_key)])
    developer = await make_caller("docs@example.com", Role.DEVELOPER)
    async with DB.transaction():
        workflow = await workflows.create_workflow(
            workflows.WorkflowSpec(owner_id=developer.user_id, name="Docs")
        )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        url = f"/api/v1/workflows/{workflow['id']}/start-now"
        response = await client.post(url, headers=developer.headers)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "running"
        assert (await client.post(url)).status_code == 401


@pytest.mark.usefixtures("db")
async def test_the_example_outside_fastapi_starts_a_run() -> None:
    example = example_module(using_from_code_examples()[1], "function_example")
    developer = await make_caller("docs@example.com", Role.DEVELOPER)
    async with DB.transaction():
        workflow = await workflows.create_workflow(
            workflows.WorkflowSpec(owner_id=developer.user_id, name="Docs")
        )
    await example.trigger_and_start(workflow["id"])
    rows = await DB.fetch("SELECT status, inputs FROM workflow_runs")
    assert [(row["status"], row["inputs"]) for row in rows] == [("running", '{"n": 1}')]
