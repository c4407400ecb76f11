"""Piccolo configuration: the one engine and the registered apps.

Importing this module does not connect: the engine resolves DATABASE_URL (or
starts the embedded server) on first use. Invalid settings stop here with a
readable message.
"""

from piccolo.conf.apps import AppRegistry

from flowforge.db.engine import FlowForgeEngine
from flowforge.settings import get_settings

get_settings()  # fail fast, with one clear message, on invalid settings

DB = FlowForgeEngine()

APP_REGISTRY = AppRegistry(
    apps=[
        "flowforge.db.piccolo_app",
        # Admin logins and their sessions (Piccolo Admin).
        "piccolo.apps.user.piccolo_app",
        "piccolo_api.session_auth.piccolo_app",
    ]
)
