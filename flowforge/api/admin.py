"""Piccolo Admin at /admin: browse every FlowForge table, change nothing.

Read-only on purpose, for every table: each change in FlowForge must write
its domain event in the same transaction and respect the run lifecycle, and
the admin's generic CRUD would do neither (it also writes NULL into omitted
columns). Changes go through the API. Secret
columns (``api_keys.key_hash``, admin password hashes) are ``secret=True`` and
never leave the server.

One form answers what the tables cannot show: "Why is a run waiting?" takes a
run's id and gives the reason ``GET /api/v1/runs/{id}`` gives
(``waiting_reason``, from ``flowforge.domain.queue.waiting_reason``: one place
for the logic). It reads; it changes nothing.

Logins are Piccolo users (``piccolo_user``, with ``admin`` set), created by
``piccolo flowforge create_admin_login`` (which the seed runs) or
``piccolo user create``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, Final
from urllib.parse import parse_qsl

import pydantic
from piccolo.apps.user.tables import BaseUser
from piccolo.table import Table
from piccolo_admin.endpoints import FormConfig, TableConfig, create_admin, log_error
from piccolo_api.crud.endpoints import OrderBy, PiccoloCRUD
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flowforge.api.errors import send_error
from flowforge.core.settings import Environment, get_settings
from flowforge.db.engine import DB
from flowforge.db.tables import (
    ApiKey,
    ConcurrencyLimit,
    Outbox,
    RunHistory,
    RunStepLog,
    User,
    Workflow,
    WorkflowRun,
    WorkflowStep,
    WorkflowVersion,
)
from flowforge.domain import queue


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
                # The run queue (issue 18).
                Workflow.queue,
                Workflow.max_concurrency,
                Workflow.concurrency_limit_id,
                Workflow.created_at,
            ],
            link_column=Workflow.name,
            visible_filters=[
                Workflow.name,
                Workflow.owner_id,
                Workflow.trigger_type,
                Workflow.is_active,
                Workflow.queue,
                Workflow.concurrency_limit_id,
            ],
        ),
        # Issue 17: every definition a workflow had; runs name the one they ran.
        TableConfig(
            WorkflowVersion,
            order_by=[OrderBy(WorkflowVersion.created_at, ascending=False)],
            visible_columns=[
                WorkflowVersion.workflow_id,
                WorkflowVersion.version,
                WorkflowVersion.trigger_type,
                WorkflowVersion.created_by_user_id,
                WorkflowVersion.created_at,
            ],
            link_column=WorkflowVersion.version,
            visible_filters=[WorkflowVersion.workflow_id, WorkflowVersion.version],
        ),
        TableConfig(
            ConcurrencyLimit,
            visible_columns=[ConcurrencyLimit.name, ConcurrencyLimit.max_running],
            link_column=ConcurrencyLimit.name,
        ),
        TableConfig(
            WorkflowStep,
            visible_columns=[
                WorkflowStep.workflow_id,
                WorkflowStep.version,
                WorkflowStep.position,
                WorkflowStep.name,
                WorkflowStep.action_type,
            ],
            link_column=WorkflowStep.name,
            visible_filters=[
                WorkflowStep.workflow_id,
                WorkflowStep.version,
                WorkflowStep.action_type,
            ],
        ),
        TableConfig(
            WorkflowRun,
            order_by=[OrderBy(WorkflowRun.created_at, ascending=False)],
            visible_columns=[
                WorkflowRun.id,
                WorkflowRun.workflow_id,
                WorkflowRun.workflow_version,
                WorkflowRun.status,
                WorkflowRun.trigger_type,
                WorkflowRun.triggered_by_user_id,
                WorkflowRun.created_at,
                WorkflowRun.started_at,
                WorkflowRun.finished_at,
                WorkflowRun.heartbeat_at,
                WorkflowRun.error,
                # The run queue (issue 18): why a queued run waits shows as its
                # not_before / next_attempt_at (and, for a retry, its error).
                WorkflowRun.priority,
                WorkflowRun.not_before,
                WorkflowRun.next_attempt_at,
                WorkflowRun.claimed_by,
                WorkflowRun.claims,
            ],
            visible_filters=[
                WorkflowRun.status,
                WorkflowRun.claimed_by,
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
            RunHistory,
            order_by=[OrderBy(RunHistory.recorded_at, ascending=False)],
            visible_columns=[
                RunHistory.recorded_at,
                RunHistory.run_id,
                RunHistory.step_position,
                RunHistory.attempt,
                RunHistory.from_status,
                RunHistory.to_status,
                RunHistory.reason,
                RunHistory.actor,
            ],
            visible_filters=[RunHistory.run_id, RunHistory.to_status, RunHistory.actor],
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


class WaitingQuestion(pydantic.BaseModel):
    """The form's one field. A string, parsed by the endpoint: its message for a
    value that is not an id is plainer than pydantic's."""

    run_id: str = pydantic.Field(
        description="The run's id (a UUID), as the workflow_runs table shows it.",
        max_length=100,
    )


# What each waiting_reason means (docs/runs.md, Queue): the admin's sentence.
REASONS: Final[dict[str, str]] = {
    "not_before": "it is delayed: its not_before has not passed yet",
    "retry_backoff": "its retry is not due yet: its next_attempt_at has not passed",
    "workflow_concurrency": "its workflow's max_concurrency is full (as many of its runs "
    "are running)",
    "queued": "it is due and has a free slot: waiting for a worker to claim it",
}


def explain(reason: str) -> str:
    """The admin's sentence for a waiting_reason."""
    if reason.startswith("concurrency_limit:"):
        name = reason.removeprefix("concurrency_limit:")
        return f"its concurrency limit {name!r} is full (as many of its runs are running)"
    return REASONS.get(reason, reason)


async def why_is_the_run_waiting(request: Request, data: WaitingQuestion) -> str:
    """The form's endpoint: the run's waiting_reason, in words. A ValueError's
    message is what Piccolo Admin shows for a refused form (a 422)."""
    text = data.run_id.strip()
    try:
        run_id = uuid.UUID(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a run id: paste a run's id (a UUID, e.g. "
            "0190f2a4-6c1e-7d3a-9b2c-1f4e5d6a7b8c) from the workflow_runs table."
        ) from None
    async with DB.transaction():
        run = await WorkflowRun.select(WorkflowRun.status).where(WorkflowRun.id == run_id).first()
        reason = await queue.waiting_reason(run_id) if run is not None else None
    if run is None:
        raise ValueError(f"No run has the id {run_id}.")
    if reason is None:
        return f"Run {run_id} is {run['status']}, not queued: it is not waiting."
    return f"Run {run_id} is {run['status']} and waits because {explain(reason)} ({reason})."


def form_configs() -> list[FormConfig]:
    return [
        FormConfig(
            name="Why is a run waiting",
            pydantic_model=WaitingQuestion,
            endpoint=why_is_the_run_waiting,
            description=(
                "Why a pending or awaiting_retry run is not running yet: the "
                "waiting_reason of GET /api/v1/runs/{id}. Reads only."
            ),
        )
    ]


# Query parameters whose value names columns (a comma-separated list, `-` for
# descending, `.` through a foreign key); any other parameter's name is a column
# to filter on, optionally with a `__operator` / `__match` suffix.
COLUMN_LIST_PARAMETERS = frozenset({"__order", "__visible_fields"})
# Piccolo Admin's own limit (PiccoloCRUD.max_page_size); it answers 403 above it.
MAX_PAGE_SIZE = PiccoloCRUD.max_page_size
# Pages beyond this are refused before the database sees an OFFSET
# (MAX_PAGE_SIZE x MAX_PAGE stays far inside PostgreSQL's bigint).
MAX_PAGE = 2**31 - 1
WHOLE_NUMBER = re.compile(r"[0-9]{1,19}")
# /api/tables/<tablename>/<rest> inside the admin mount.
TABLE_PATH = re.compile(r"/api/tables/(?P<table>[^/]+)/(?P<rest>.*)")
# /api/forms/<slug>/ inside the admin mount: a form's POST.
FORM_PATH = re.compile(r"/api/forms/[^/]+/")
# A form's body is a few fields: more is refused before it is read whole.
MAX_FORM_BODY = 64 * 1024


class AdminQueryError(Exception):
    """An admin request Piccolo Admin would choke on (answered 400, or 403 for a write)."""

    def __init__(
        self, code: str, message: str, details: dict[str, Any] | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


def _referenced_columns(name: str, value: str) -> Iterator[str]:
    if name in COLUMN_LIST_PARAMETERS:
        for item in value.split(","):
            yield from item.strip().lstrip("-").split(".")
    elif not name.startswith("__"):
        yield from name.split("__", 1)[0].split(".")


def _whole_number(name: str, value: str, low: int, high: int) -> None:
    if not WHOLE_NUMBER.fullmatch(value) or not low <= int(value) <= high:
        raise AdminQueryError(
            "bad_request",
            f"{name} must be a whole number from {low} to {high}, not {value!r}.",
            {"parameter": name},
        )


def _check_column_list(name: str, value: str, table: type[Table]) -> None:
    """Every item of `__order` / `__visible_fields` is one of `table`'s columns.

    Piccolo's CRUD raises (a 500) on an unknown `__order` column and on any
    `.` join (the admin allows none). Exact names only: no case folding, no
    `+` (a `+` in a query string is a space).
    """
    columns = [column._meta.name for column in table._meta.columns if not column._meta.secret]
    for item in value.split(","):
        column = item[1:] if name == "__order" and item.startswith("-") else item
        if column not in columns:
            raise AdminQueryError(
                "bad_request",
                f"{name}: {column!r} is not a column of {table._meta.tablename}; "
                f"the columns are {', '.join(columns)}"
                + (" (prefix - to sort descending)." if name == "__order" else "."),
                {"parameter": name, "columns": columns},
            )


class AdminQueryGuard:
    """Checks every admin request's query before Piccolo Admin sees it (400 if bad).

    * Secret columns: ``secret=True`` keeps a column's values out of the admin's
      responses, but its CRUD API still orders and filters by it:
      `?__order=key_hash` leaks the hashes' order and
      `?key_hash=..&key_hash__match=starts` reads a hash one character at a time.
    * Input Piccolo's CRUD does not validate and answers with a 500 and a
      traceback: unknown or joined `__order` columns, repeated or non-numeric
      `__page` / `__page_size`, negative sizes (a database error), NUL
      characters (PostgreSQL text cannot hold them); filter values its own
      filter model refuses are translated to a 400 on the way back.
    * ``/api/tables/<table>/new/`` (the defaults of a new row, for the create
      form): the admin is read-only, so there is no form; some defaults (the
      outbox's ``seq`` sequence) cannot even be rendered.
    """

    def __init__(self, app: ASGIApp, tables: Iterable[type[Table]]) -> None:
        self.app = app
        tables = list(tables)
        self.tables = {table._meta.tablename: table for table in tables}
        self.secret_columns = frozenset(
            column._meta.name for table in tables for column in table._meta.secret_columns
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self.check(scope)
            if scope["method"] == "POST" and FORM_PATH.fullmatch(self._path(scope)):
                receive = await self._form_body(receive)
        except AdminQueryError as error:
            await send_error(send, error.status, error.code, error.message, error.details)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except pydantic.ValidationError as error:
            # Piccolo's CRUD validates filter values with its `<Table>Filters`
            # model (a value too long for its column, not JSON for a JSONB one)
            # and lets the error escape: a client's mistake, not a bug. Other
            # validation errors (responses) stay 500s.
            if started or not error.title.endswith("Filters"):
                raise
            problems = [
                {
                    "parameter": ".".join(str(part) for part in item["loc"]),
                    "message": item["msg"],
                }
                for item in error.errors(include_url=False, include_input=False)
            ]
            message = "; ".join(f"{p['parameter']}: {p['message'].rstrip('.')}" for p in problems)
            await send_error(
                send,
                400,
                "bad_request",
                f"Filter values not valid: {message}.",
                {"problems": problems},
            )

    def check(self, scope: Scope) -> None:
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), True)
        for name, value in query:
            if "\x00" in name or "\x00" in value:
                raise AdminQueryError(
                    "bad_request", "Query parameters cannot contain NUL characters."
                )
            secret = sorted(self.secret_columns.intersection(_referenced_columns(name, value)))
            if secret:
                raise AdminQueryError(
                    "secret_column",
                    f"Secret columns cannot be sorted, filtered or selected: {', '.join(secret)}.",
                    {"columns": secret},
                )
        names = [name for name, _ in query]
        for name in ("__page", "__page_size"):
            if names.count(name) > 1:
                raise AdminQueryError(
                    "bad_request", f"{name} can be given once.", {"parameter": name}
                )
        for name, value in query:
            if name == "__page_size":
                _whole_number(name, value, 1, MAX_PAGE_SIZE)
            elif name == "__page":
                _whole_number(name, value, 1, MAX_PAGE)
        match = TABLE_PATH.fullmatch(self._path(scope))
        table = self.tables.get(match["table"]) if match else None
        if match is None or table is None:
            return  # not a known table's endpoint: Piccolo Admin answers (404)
        if match["rest"] == "new/":
            raise AdminQueryError(
                "read_only",
                "Piccolo Admin is read-only: rows are created through the API.",
                status=403,
            )
        for name, value in query:
            if name in COLUMN_LIST_PARAMETERS:
                _check_column_list(name, value, table)

    @staticmethod
    def _path(scope: Scope) -> str:
        return str(scope["path"])[len(str(scope.get("root_path", ""))) :]

    @staticmethod
    async def _form_body(receive: Receive) -> Receive:
        """A form's body, read whole and checked to be a JSON object (Piccolo
        Admin parses it unguarded: anything else was a 500); the returned
        `receive` replays it to the admin."""
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away: the admin sees the disconnect
            body += message.get("body", b"")
            if len(body) > MAX_FORM_BODY:
                raise AdminQueryError(
                    "bad_request", f"A form's body is at most {MAX_FORM_BODY} bytes."
                )
            if not message.get("more_body", False):
                break
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise AdminQueryError("bad_request", "A form's body must be a JSON object.")
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay


def build_admin() -> Any:
    """The admin ASGI app, mounted by create_app() at /admin/."""
    settings = get_settings()
    configs = table_configs()
    admin = create_admin(
        configs,
        forms=form_configs(),
        read_only=True,
        site_name="FlowForge Admin",
        # Secure (HTTPS-only) cookies and stricter checks outside development.
        production=settings.environment is Environment.PRODUCTION,
        auto_include_related=False,
    )
    _reraise_server_errors(admin)
    return AdminQueryGuard(admin, [*(config.table_class for config in configs), BaseUser])


async def _reraise(request: Request, error: Exception) -> Response:
    raise error


def _reraise_server_errors(app: Any) -> None:
    """Stop Piccolo Admin logging every error as ``Server error`` with a traceback.

    Its apps (the admin and its mounted ``/api`` and ``/public`` apps) log each
    exception, then re-raise it to FlowForge's handler, which answers expected
    failures (a database refusing a value: 422) without a traceback and logs
    real bugs itself with the request id. Their line said ``error`` for a
    client's mistake, once per nested app.
    """
    while not hasattr(app, "routes") and hasattr(app, "app"):
        app = app.app  # through middleware (the admin's authentication)
    handlers = getattr(app, "exception_handlers", {})
    if handlers.get(500) is log_error:
        handlers[500] = _reraise
    for route in getattr(app, "routes", []):
        if isinstance(route, Mount):
            _reraise_server_errors(route.app)
