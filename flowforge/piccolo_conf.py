"""Piccolo configuration for the `piccolo` CLI: the one engine and the apps.

Installed with the package, so the CLI works from any directory with
``PICCOLO_CONF=flowforge.piccolo_conf`` (the image sets it); a checkout's
top-level ``piccolo_conf.py`` re-exports this module.

Settings are validated here, and the database target resolved (starting the
embedded server when DATABASE_URL is unset), so a bad configuration stops the
CLI with a readable message and exit status 2 instead of a traceback.
"""

from piccolo.conf.apps import AppRegistry

from flowforge.commands.piccolo_cli import adapt_piccolo_cli
from flowforge.core.logs import configure_logging
from flowforge.db.engine import DB, check_configuration
from flowforge.db.migrations import PICCOLO_APPS

# FlowForge's app, and Piccolo's own apps for Piccolo Admin (their migrations run
# with FlowForge's: `piccolo flowforge migrate`).
APP_REGISTRY = AppRegistry(apps=["flowforge.piccolo_app", *PICCOLO_APPS])

check_configuration()
configure_logging()  # every command logs like the API (LOG_FORMAT)
# Piccolo's CLI only: unknown `flowforge` commands exit 2, its migration
# commands take the migration lock, its warnings lose their colour codes off a
# terminal (flowforge/commands/piccolo_cli.py).
adapt_piccolo_cli()

__all__ = ["APP_REGISTRY", "DB"]
