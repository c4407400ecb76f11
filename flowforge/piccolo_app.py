"""The `flowforge` Piccolo app: its tables, its migrations and its commands."""

from piccolo.conf.apps import AppConfig, Command

from flowforge.commands import COMMANDS
from flowforge.db.migrations import flowforge_folder
from flowforge.db.tables import TABLES

APP_CONFIG = AppConfig(
    app_name="flowforge",
    # Piccolo imports every .py in it (but __init__.py) by bare name, so it
    # holds migrations and nothing else.
    migrations_folder_path=str(flowforge_folder()),
    table_classes=list(TABLES),
    migration_dependencies=[],
    # The commands live in flowforge/commands/ (the only code that prints or exits).
    commands=[Command(callable=command, aliases=aliases) for command, aliases in COMMANDS],
)
