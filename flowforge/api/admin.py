"""Piccolo Admin at /admin: browse every FlowForge table, change nothing.

Read-only on purpose, for every table: each change in FlowForge must write
its domain event in the same transaction and respect the run lifecycle, and
the admin's generic CRUD would do neither (it also writes NULL into omitted
columns). Changes go through the API. Secret
columns (``api_keys.key_hash``, admin password hashes) are ``secret=True`` and
never leave the server.

Logins are Piccolo users (``piccolo_user``, with ``admin`` set), created by
``piccolo flowforge create_admin_login`` (which the seed runs) or
``piccolo user create``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl

from piccolo.apps.user.tables import BaseUser
from piccolo.table import Table
from piccolo_admin.endpoints import TableConfig, create_admin
from piccolo_api.crud.endpoints import OrderBy
from starlette.types import ASGIApp, Receive, Scope, Send

from flowforge.api.errors import send_error
from flowforge.core.settings import Environment, get_settings
from flowforge.db.tables import (
    ApiKey,
    Outbox,
    RunStepLog,
    User,
    Workflow,
    WorkflowRun,
    WorkflowStep,
)


def table_configs() -> list[TableConfig]:
    return [
        TableConfig(
            User,
            order_by=[OrderBy(User.created_at, ascending=False)],
            visible_columns=[User.email, User.display_name, User.role, User.is_active],
            visible_filters=[User.email, User.role, User.is_active],
        ),
        TableConfig(
            ApiKey,
            order_by=[OrderBy(ApiKey.created_at, ascending=False)],
            visible_columns=[
                ApiKey.prefix,
                ApiKey.name,
                ApiKey.user_id,
                ApiKey.scopes,
                ApiKey.expires_at,
                ApiKey.revoked_at,
                ApiKey.last_used_at,
            ],
            link_column=ApiKey.prefix,
            visible_filters=[ApiKey.user_id, ApiKey.prefix, ApiKey.revoked_at],
        ),
        TableConfig(
            Workflow,
            order_by=[OrderBy(Workflow.created_at, ascending=False)],
            visible_columns=[
                Workflow.name,
                Workflow.owner_id,
                Workflow.trigger_type,
                Workflow.is_active,
                Workflow.created_at,
            ],
            link_column=Workflow.name,
            visible_filters=[
                Workflow.name,
                Workflow.owner_id,
                Workflow.trigger_type,
                Workflow.is_active,
            ],
        ),
        TableConfig(
            WorkflowStep,
            visible_columns=[
                WorkflowStep.workflow_id,
                WorkflowStep.position,
                WorkflowStep.name,
                WorkflowStep.action_type,
            ],
            link_column=WorkflowStep.name,
            visible_filters=[WorkflowStep.workflow_id, WorkflowStep.action_type],
        ),
        TableConfig(
            WorkflowRun,
            order_by=[OrderBy(WorkflowRun.created_at, ascending=False)],
            visible_columns=[
                WorkflowRun.id,
                WorkflowRun.workflow_id,
                WorkflowRun.status,
                WorkflowRun.trigger_type,
                WorkflowRun.triggered_by_user_id,
                WorkflowRun.created_at,
                WorkflowRun.started_at,
                WorkflowRun.finished_at,
                WorkflowRun.heartbeat_at,
                WorkflowRun.error,
            ],
            visible_filters=[
                WorkflowRun.status,
                WorkflowRun.workflow_id,
                WorkflowRun.trigger_type,
                WorkflowRun.created_at,
            ],
        ),
        TableConfig(
            RunStepLog,
            order_by=[OrderBy(RunStepLog.created_at, ascending=False)],
            visible_columns=[
                RunStepLog.run_id,
                RunStepLog.step_position,
                RunStepLog.step_name,
                RunStepLog.attempt,
                RunStepLog.status,
                RunStepLog.started_at,
                RunStepLog.finished_at,
                RunStepLog.error,
            ],
            link_column=RunStepLog.step_name,
            visible_filters=[RunStepLog.run_id, RunStepLog.status, RunStepLog.step_name],
        ),
        TableConfig(
            Outbox,
            order_by=[OrderBy(Outbox.created_at, ascending=False)],
            visible_columns=[
                Outbox.event_type,
                Outbox.aggregate_type,
                Outbox.aggregate_id,
                Outbox.created_at,
                Outbox.published_at,
                # The relay's delivery state: failed attempts and dead letters.
                Outbox.attempts,
                Outbox.last_error,
                Outbox.dead_lettered_at,
            ],
            link_column=Outbox.event_type,
            visible_filters=[
                Outbox.event_type,
                Outbox.aggregate_type,
                Outbox.aggregate_id,
                Outbox.published_at,
                Outbox.dead_lettered_at,
            ],
        ),
    ]


# Query parameters whose value names columns (a comma-separated list, `-` for
# descending, `.` through a foreign key); any other parameter's name is a column
# to filter on, optionally with a `__operator` / `__match` suffix.
COLUMN_LIST_PARAMETERS = frozenset({"__order", "__visible_fields"})


def _referenced_columns(name: str, value: str) -> Iterator[str]:
    if name in COLUMN_LIST_PARAMETERS:
        for item in value.split(","):
            yield from item.strip().lstrip("-").split(".")
    elif not name.startswith("__"):
        yield from name.split("__", 1)[0].split(".")


class SecretColumnGuard:
    """Refuses admin requests that sort, filter or select on a secret column (400).

    ``secret=True`` keeps a column's values out of the admin's responses, but
    its CRUD API still orders and filters by it: `?__order=key_hash` leaks the
    hashes' order and `?key_hash=..&key_hash__match=starts` reads a hash one
    character at a time. Every request to the admin passes here first.
    """

    def __init__(self, app: ASGIApp, tables: Iterable[type[Table]]) -> None:
        self.app = app
        self.secret_columns = frozenset(
            column._meta.name for table in tables for column in table._meta.secret_columns
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), True)
            for name, value in query:
                secret = self.secret_columns.intersection(_referenced_columns(name, value))
                if secret:
                    await self._refuse(send, sorted(secret))
                    return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(send: Send, columns: list[str]) -> None:
        await send_error(
            send,
            400,
            "secret_column",
            f"Secret columns cannot be sorted, filtered or selected: {', '.join(columns)}.",
            {"columns": columns},
        )


def build_admin() -> Any:
    """The admin ASGI app, mounted by create_app() at /admin/."""
    settings = get_settings()
    configs = table_configs()
    admin = create_admin(
        configs,
        read_only=True,
        site_name="FlowForge Admin",
        # Secure (HTTPS-only) cookies and stricter checks outside development.
        production=settings.environment is Environment.PRODUCTION,
        auto_include_related=False,
    )
    return SecretColumnGuard(admin, [*(config.table_class for config in configs), BaseUser])
