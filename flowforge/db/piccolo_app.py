"""The `flowforge` Piccolo app: its tables, its migrations and its commands."""

import importlib.util
from pathlib import Path

from piccolo.conf.apps import AppConfig, Command

from flowforge.commands import COMMANDS
from flowforge.db.tables import TABLES
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
    # The commands live in flowforge/commands/ (the only code that prints or exits).
    commands=[Command(callable=command, aliases=aliases) for command, aliases in COMMANDS],
)
