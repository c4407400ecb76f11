"""The `flowforge` Piccolo app: its tables, its migrations and its commands."""

from piccolo.conf.apps import AppConfig, Command

from flowforge import cli
from flowforge.bootstrap import create_admin_login, create_api_key
from flowforge.cliargs import command
from flowforge.db.tables import TABLES
from flowforge.seed import seed
from flowforge.settings import REPO_ROOT

APP_CONFIG = AppConfig(
    app_name="flowforge",
    # Top-level folder: Piccolo imports every .py in it by bare name, so it
    # holds migrations and nothing else.
    migrations_folder_path=str(REPO_ROOT / "piccolo_migrations"),
    table_classes=list(TABLES),
    migration_dependencies=[],
    # Each parses its own options (`--x value` and `--x=value`; bad values exit 2):
    # flowforge/cliargs.py.
    commands=[
        Command(callable=command(seed, aliases=["seed-data"]), aliases=["seed-data"]),
        Command(callable=command(create_api_key)),
        Command(callable=command(create_admin_login)),
        # Relay, status, requeue, prune, reap (issue 4).
        *(Command(callable=command(function)) for function in cli.COMMANDS),
    ],
)
