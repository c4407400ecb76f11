"""The `flowforge` Piccolo app: its tables, its migrations and its commands."""

from piccolo.conf.apps import AppConfig, Command

from flowforge.commands import COMMANDS
from flowforge.db.tables import TABLES
from flowforge.settings import REPO_ROOT

APP_CONFIG = AppConfig(
    app_name="flowforge",
    # Top-level folder: Piccolo imports every .py in it by bare name, so it
    # holds migrations and nothing else.
    migrations_folder_path=str(REPO_ROOT / "piccolo_migrations"),
    table_classes=list(TABLES),
    migration_dependencies=[],
    # The commands live in flowforge/commands/ (the only code that prints or exits).
    commands=[Command(callable=command, aliases=aliases) for command, aliases in COMMANDS],
)
