"""The `flowforge` Piccolo app: its tables, its migrations and its commands."""

import importlib.util
from pathlib import Path

from piccolo.conf.apps import AppConfig, Command

from flowforge import cli
from flowforge.bootstrap import create_admin_login, create_api_key
from flowforge.cliargs import command
from flowforge.db.migrate import migrate
from flowforge.db.tables import TABLES
from flowforge.seed import seed
from flowforge.settings import CHECKOUT


def migrations_folder() -> Path:
    """The migration files: the checkout's top-level `piccolo_migrations/` when
    running from a checkout, else the copy a wheel ships as `flowforge.migrations`
    (pyproject.toml maps the folder to that package)."""
    if CHECKOUT is not None:
        return CHECKOUT / "piccolo_migrations"
    spec = importlib.util.find_spec("flowforge.migrations")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("flowforge.migrations is missing from this installation")
    return Path(next(iter(spec.submodule_search_locations)))


APP_CONFIG = AppConfig(
    app_name="flowforge",
    # Piccolo imports every .py in it (but __init__.py) by bare name, so it
    # holds migrations and nothing else.
    migrations_folder_path=str(migrations_folder()),
    table_classes=list(TABLES),
    migration_dependencies=[],
    # Each parses its own options (`--x value` and `--x=value`; bad values exit 2):
    # flowforge/cliargs.py.
    commands=[
        # Migrations for every app under an advisory lock (what deployments run).
        Command(callable=command(migrate)),
        Command(callable=command(seed, aliases=["seed-data"]), aliases=["seed-data"]),
        Command(callable=command(create_api_key)),
        Command(callable=command(create_admin_login)),
        # Relay, status, requeue, prune, reap (issue 4).
        *(Command(callable=command(function)) for function in cli.COMMANDS),
    ],
)
