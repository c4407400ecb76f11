"""Piccolo configuration for the `piccolo` CLI: the one engine and the apps.

Importing this module does not connect: the engine resolves DATABASE_URL (or
starts the embedded server) on first use. Invalid settings stop here with a
readable message and exit status 2.
"""

from flowforge.db.engine import DB
from flowforge.db.registry import APP_REGISTRY
from flowforge.settings import get_settings

get_settings()

__all__ = ["APP_REGISTRY", "DB"]
