"""Where each Piccolo app's migration files are, found without loading any app's commands.

Readiness compares these files with the migrations the database has applied;
the API process must not import FlowForge's commands to find them (importing
``flowforge.piccolo_app`` would: Piccolo declares an app's commands in its
AppConfig). FlowForge's own folder is a checkout's ``piccolo_migrations/`` or
the copy a wheel ships as ``flowforge.migrations``; Piccolo's own apps (Piccolo
Admin's users and sessions) import nothing but Piccolo.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from flowforge.core.settings import CHECKOUT

# Piccolo's own apps FlowForge runs with: Admin logins and their sessions.
PICCOLO_APPS = ("piccolo.apps.user.piccolo_app", "piccolo_api.session_auth.piccolo_app")


def flowforge_folder() -> Path:
    """FlowForge's migration files: the checkout's top-level `piccolo_migrations/`
    when running from a checkout, else the copy a wheel ships as
    `flowforge.migrations` (setup.py maps the folder to that package)."""
    if CHECKOUT is not None:
        return CHECKOUT / "piccolo_migrations"
    spec = importlib.util.find_spec("flowforge.migrations")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("flowforge.migrations is missing from this installation")
    return Path(next(iter(spec.submodule_search_locations)))


def migration_folders() -> dict[str, Path]:
    """App name -> its migrations folder, for every app FlowForge migrates."""
    folders = {"flowforge": flowforge_folder()}
    for module in PICCOLO_APPS:
        config = importlib.import_module(module).APP_CONFIG
        folders[config.app_name] = Path(config.resolved_migrations_folder_path)
    return folders
