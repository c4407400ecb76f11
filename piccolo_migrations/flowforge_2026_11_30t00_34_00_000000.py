"""``uuidv7()`` on servers older than PostgreSQL 18 (issue 11, docs/decisions/10-uuidv7-keys.md).

PostgreSQL 18 has ``uuidv7()`` built in (pg_catalog); on 15-17 this creates
``public.uuidv7()``, a SQL function with the same RFC 9562 layout (48 bits of
Unix time in ms, version 7, 12 bits of sub-millisecond time so that keys from
one session stay in order, the variant, 62 random bits), so that one column
default, ``DEFAULT uuidv7()``, works on every supported server. The next
migration switches the high-volume tables' keys to it.

Separate from that migration because ``add_raw`` steps run before a
migration's table operations on the way forwards but the function must be
dropped only after the defaults that use it are gone on the way back.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-30T00:34:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "uuidv7() for PostgreSQL < 18"

CREATE = """
DO $do$
BEGIN
  IF current_setting('server_version_num')::int < 180000 THEN
    EXECUTE $create$
      CREATE OR REPLACE FUNCTION public.uuidv7() RETURNS uuid
      LANGUAGE sql VOLATILE PARALLEL SAFE AS $fn$
        SELECT encode(
          int8send((floor(ms)::bigint << 16) | (7 << 12)
                   | floor((ms - floor(ms)) * 4096)::bigint)
            || substring(uuid_send(gen_random_uuid()) FROM 9 FOR 8),
          'hex')::uuid
        FROM (SELECT extract(epoch FROM clock_timestamp()) * 1000 AS ms) AS now
      $fn$
    $create$;
  END IF;
END
$do$
"""

# Only ever ours: on PostgreSQL 18 the built-in one lives in pg_catalog.
DROP = "DROP FUNCTION IF EXISTS public.uuidv7()"


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="flowforge", description=DESCRIPTION)

    async def run() -> None:
        engine = engine_finder()
        assert engine is not None
        await engine.run_ddl(CREATE)

    async def run_backwards() -> None:
        engine = engine_finder()
        assert engine is not None
        await engine.run_ddl(DROP)

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
