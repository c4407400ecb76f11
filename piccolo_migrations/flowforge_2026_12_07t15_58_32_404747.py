"""api_keys.granted_by_key_id: the key that granted a key (issue 15: revoking a key
revokes every key it granted, transitively).

Nullable, no default: adding it changes only the catalog (no rewrite). Its
foreign key is validated by a scan of api_keys under the ADD COLUMN's lock, which
finds nothing to check (every row is NULL) and is short (one row per key). The
raw step (which Piccolo runs first, in the same transaction) bounds the wait for
that ACCESS EXCLUSIVE lock, so the migration fails instead of queueing every
request behind a long transaction. The index for the recursive lookup comes from
the next migration (partial, built CONCURRENTLY). Backwards drops the column.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.base import OnDelete
from piccolo.columns.base import OnUpdate
from piccolo.columns.column_types import ForeignKey
from piccolo.columns.indexes import IndexMethod
from piccolo.engine import engine_finder

ID = "2026-12-07T15:58:32:404747"
VERSION = "1.38.0"
DESCRIPTION = "api_keys.granted_by_key_id (the key that granted the key)"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="flowforge", description=DESCRIPTION)

    async def bounded_lock_wait() -> None:
        engine = engine_finder()
        assert engine is not None
        await engine.run_ddl("SET LOCAL lock_timeout = '5s'")

    manager.add_raw(bounded_lock_wait)

    manager.add_column(
        table_class_name="ApiKey",
        tablename="api_keys",
        column_name="granted_by_key_id",
        db_column_name="granted_by_key_id",
        column_class_name="ForeignKey",
        column_class=ForeignKey,
        params={
            "references": "self",
            "on_delete": OnDelete.cascade,
            "on_update": OnUpdate.cascade,
            "target_column": None,
            "null": True,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    return manager
