"""Is the database ready for this code? Reachable, and its schema at head."""

from __future__ import annotations

import asyncio
from functools import lru_cache

import asyncpg
from piccolo.apps.migrations.commands.base import BaseMigrationManager
from piccolo.columns import Varchar
from piccolo.table import Table

from flowforge.core.errors import CONNECTION_ERRORS, DatabaseUnavailableError
from flowforge.db.builder import compiled
from flowforge.db.engine import DB
from flowforge.db.migrations import migration_folders


class NotReadyError(Exception):
    """The database cannot serve this version of FlowForge (yet)."""


@lru_cache(maxsize=1)
def expected_migrations() -> frozenset[tuple[str, str]]:
    """(app, migration id) for every migration file of every registered app."""
    manager = BaseMigrationManager()
    expected: set[tuple[str, str]] = set()
    for app_name, folder in migration_folders().items():
        modules = manager.get_migration_modules(str(folder))
        expected.update((app_name, migration_id) for migration_id in modules)
    return frozenset(expected)


class AppliedMigration(Table, tablename="migration", db=DB):
    """Piccolo's own record of applied migrations, bound to FlowForge's engine.

    (``piccolo.apps.migrations.tables.Migration`` finds its engine by
    importing ``piccolo_conf``; readiness must not depend on the working
    directory.) Not in ``TABLES``: Piccolo's migrations app owns the table.
    """

    app_name = Varchar(length=200)
    name = Varchar(length=200)


async def _applied_migrations() -> set[tuple[str, str]]:
    try:
        rows = await compiled(
            "readiness.applied_migrations",
            lambda: AppliedMigration.select(AppliedMigration.app_name, AppliedMigration.name),
        ).fetch()
    except asyncpg.exceptions.UndefinedTableError:
        return set()
    return {(row["app_name"], row["name"]) for row in rows}


async def check_database(deadline_seconds: float) -> None:
    """Raise NotReadyError with a safe, short reason unless the database is ready.

    A query through the pool proves the database answers; comparing applied
    migrations with the migration files proves the schema is the one this
    code expects. Pooled connections that died while the server restarted
    each fail once, so connection errors are retried (bounded by pool size
    and by `deadline_seconds`) before the check gives up.
    """
    attempts = DB.settings.pool_max_size + 1
    try:
        async with asyncio.timeout(deadline_seconds):
            for attempt in range(attempts):
                try:
                    async with DB.transaction():
                        applied = await _applied_migrations()
                    break
                except CONNECTION_ERRORS:
                    if attempt == attempts - 1:
                        raise
    except TimeoutError:
        raise NotReadyError(f"no answer within {deadline_seconds:g}s") from None
    except DatabaseUnavailableError as error:
        # While the pool waits to start, say why (e.g. 'database "x" does not exist').
        reason = DB.start_problem or error.message.rstrip(".").lower()
        raise NotReadyError(reason) from None
    except CONNECTION_ERRORS as error:
        raise NotReadyError(f"cannot connect ({type(error).__name__})") from None
    except asyncpg.PostgresError as error:
        raise NotReadyError(f"query failed ({error.sqlstate})") from None
    pending = expected_migrations() - applied
    if pending:
        names = ", ".join(sorted(f"{app}:{migration}" for app, migration in pending))
        raise NotReadyError(f"{len(pending)} migration(s) not applied: {names}")
