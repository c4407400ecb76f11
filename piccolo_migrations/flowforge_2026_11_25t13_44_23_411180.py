from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import BigSerial
from piccolo.columns.column_types import Integer
from piccolo.columns.column_types import Text
from piccolo.columns.column_types import Timestamptz
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.columns.indexes import IndexMethod
from piccolo.constraints import Check

ID = "2026-11-25T13:44:23:411180"
VERSION = "1.38.0"
DESCRIPTION = "outbox relay state and run heartbeat"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="flowforge", description=DESCRIPTION)

    manager.add_column(
        table_class_name="WorkflowRun",
        tablename="workflow_runs",
        column_name="heartbeat_at",
        db_column_name="heartbeat_at",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
        params={
            "default": None,
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

    manager.add_column(
        table_class_name="Outbox",
        tablename="outbox",
        column_name="attempts",
        db_column_name="attempts",
        column_class_name="Integer",
        column_class=Integer,
        params={
            "default": 0,
            "null": False,
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

    manager.add_column(
        table_class_name="Outbox",
        tablename="outbox",
        column_name="dead_lettered_at",
        db_column_name="dead_lettered_at",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
        params={
            "default": None,
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

    manager.add_column(
        table_class_name="Outbox",
        tablename="outbox",
        column_name="last_error",
        db_column_name="last_error",
        column_class_name="Text",
        column_class=Text,
        params={
            "default": None,
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

    manager.add_column(
        table_class_name="Outbox",
        tablename="outbox",
        column_name="next_attempt_at",
        db_column_name="next_attempt_at",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
        params={
            "default": TimestamptzNow(),
            "null": False,
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

    manager.add_column(
        table_class_name="Outbox",
        tablename="outbox",
        column_name="seq",
        db_column_name="seq",
        column_class_name="BigSerial",
        column_class=BigSerial,
        params={
            "null": False,
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

    manager.add_constraint(
        table_class_name="WorkflowRun",
        tablename="workflow_runs",
        constraint_name="workflow_runs_heartbeat_only_when_started",
        constraint_class=Check,
        params={"condition": "heartbeat_at IS NULL OR started_at IS NOT NULL"},
        schema=None,
    )

    manager.add_constraint(
        table_class_name="Outbox",
        tablename="outbox",
        constraint_name="outbox_attempts_non_negative",
        constraint_class=Check,
        params={"condition": "attempts >= 0"},
        schema=None,
    )

    manager.add_constraint(
        table_class_name="Outbox",
        tablename="outbox",
        constraint_name="outbox_dead_letter_has_error",
        constraint_class=Check,
        params={"condition": "dead_lettered_at IS NULL OR last_error IS NOT NULL"},
        schema=None,
    )

    manager.add_constraint(
        table_class_name="Outbox",
        tablename="outbox",
        constraint_name="outbox_published_or_dead_lettered",
        constraint_class=Check,
        params={"condition": "published_at IS NULL OR dead_lettered_at IS NULL"},
        schema=None,
    )

    return manager
