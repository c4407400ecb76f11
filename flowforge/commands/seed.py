"""Development seed data: `piccolo flowforge seed`.

3 users (admin, developer, viewer), 5 workflows with steps, 10 runs in mixed
statuses with their step logs, and the outbox events those changes emit.

Idempotent by construction: every row has a deterministic id (UUIDv5) and
fixed timestamps, and is upserted on that id, so a second run rewrites the
same values (seed rows edited by hand are restored; other data is untouched).
Events are immutable facts: they are inserted once and never rewritten, so a
relay's ``published_at`` survives a re-seed.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, LiteralString
from uuid import UUID, uuid5

from flowforge import events, outbox
from flowforge.db.engine import DB
from flowforge.db.tables import Role, RunStatus, TriggerType
from flowforge.jsonutil import dumps

NAMESPACE = UUID("6f1c0c56-3f0e-4f57-9a43-4b0b7b3f5e10")
EPOCH = datetime.datetime(2026, 1, 5, 9, 0, tzinfo=datetime.UTC)


def seed_id(*parts: object) -> UUID:
    return uuid5(NAMESPACE, ":".join(str(part) for part in parts))


def at(minutes: float) -> datetime.datetime:
    return EPOCH + datetime.timedelta(minutes=minutes)


USERS = [
    ("admin@flowforge.local", "Ada Admin", Role.ADMIN),
    ("developer@flowforge.local", "Dev Developer", Role.DEVELOPER),
    ("viewer@flowforge.local", "Vic Viewer", Role.VIEWER),
]

# name, owner email, trigger type, trigger config, steps (name, action type, config)
WORKFLOWS: list[
    tuple[str, str, TriggerType, dict[str, Any], list[tuple[str, str, dict[str, Any]]]]
] = [
    (
        "Nightly report",
        "developer@flowforge.local",
        TriggerType.SCHEDULE,
        {"cron": "0 2 * * *", "timezone": "UTC"},
        [
            ("Query metrics", "sql.query", {"sql": "select count(*) from orders"}),
            ("Render report", "template.render", {"template": "nightly.html"}),
            ("Email team", "email.send", {"to": ["team@example.com"]}),
        ],
    ),
    (
        "New signup welcome",
        "developer@flowforge.local",
        TriggerType.EVENT,
        {"event_type": "user.signed_up"},
        [
            ("Wait a minute", "delay", {"seconds": 60}),
            ("Send welcome email", "email.send", {"template": "welcome"}),
        ],
    ),
    (
        "GitHub push to Slack",
        "developer@flowforge.local",
        TriggerType.WEBHOOK,
        {"path": "/hooks/github", "secret_ref": "github-webhook"},
        [
            ("Parse payload", "json.transform", {"expression": "$.commits[*].message"}),
            (
                "Post to Slack",
                "http.request",
                {"method": "POST", "url": "https://slack.example/hook"},
            ),
        ],
    ),
    (
        "Invoice reconciliation",
        "admin@flowforge.local",
        TriggerType.MANUAL,
        {},
        [
            (
                "Fetch invoices",
                "http.request",
                {"method": "GET", "url": "https://billing.example/api"},
            ),
            ("Match payments", "python.call", {"function": "recon.match"}),
            ("Flag mismatches", "python.call", {"function": "recon.flag"}),
            ("Notify finance", "email.send", {"to": ["finance@example.com"]}),
        ],
    ),
    (
        "Weekly cleanup",
        "admin@flowforge.local",
        TriggerType.SCHEDULE,
        {"cron": "0 4 * * 0", "timezone": "UTC"},
        [("Archive old files", "storage.archive", {"older_than_days": 30})],
    ),
]

RETRY_POLICY = {"max_attempts": 3, "backoff_seconds": 10, "backoff_multiplier": 2.0}

# (workflow index, status, failing step position or None) - two runs per workflow.
RUNS: list[tuple[int, RunStatus, int | None]] = [
    (0, RunStatus.COMPLETED, None),
    (0, RunStatus.FAILED, 2),
    (1, RunStatus.COMPLETED, None),
    (1, RunStatus.RUNNING, None),
    (2, RunStatus.COMPLETED, None),
    (2, RunStatus.PENDING, None),
    (3, RunStatus.FAILED, 1),
    (3, RunStatus.CANCELLED, None),
    (4, RunStatus.COMPLETED, None),
    (4, RunStatus.RUNNING, None),
]


@dataclass
class SeedData:
    users: list[tuple[Any, ...]]
    workflows: list[tuple[Any, ...]]
    steps: list[tuple[Any, ...]]
    runs: list[tuple[Any, ...]]
    logs: list[tuple[Any, ...]]
    events: list[tuple[Any, ...]]


def build() -> SeedData:
    """Every seed row, computed (no I/O): the same on every call."""
    data = SeedData([], [], [], [], [], [])
    user_ids = {email: seed_id("user", email) for email, _, _ in USERS}
    for index, (email, name, role) in enumerate(USERS):
        created = at(index)
        data.users.append((user_ids[email], email, name, role.value, True, created))
        data.events.append(
            (
                seed_id("event", "user.created", email),
                events.USER,
                user_ids[email],
                "user.created",
                {"user_id": user_ids[email], "email": email, "role": role.value},
                created,
            )
        )

    workflow_steps: list[list[tuple[UUID, int, str]]] = []
    for index, (name, owner, trigger, trigger_config, steps) in enumerate(WORKFLOWS):
        workflow_id = seed_id("workflow", name)
        created = at(60 + index)
        data.workflows.append(
            (
                workflow_id,
                user_ids[owner],
                name,
                f"Seeded example: {name.lower()}.",
                trigger.value,
                dumps(trigger_config),
                True,
                created,
            )
        )
        these_steps = []
        for position, (step_name, action, config) in enumerate(steps):
            step_id = seed_id("step", name, position)
            these_steps.append((step_id, position, step_name))
            data.steps.append(
                (
                    step_id,
                    workflow_id,
                    position,
                    step_name,
                    action,
                    dumps(config),
                    dumps(RETRY_POLICY),
                    created,
                )
            )
        workflow_steps.append(these_steps)
        data.events.append(
            (
                seed_id("event", "workflow.created", name),
                events.WORKFLOW,
                workflow_id,
                "workflow.created",
                {
                    "workflow_id": workflow_id,
                    "owner_id": user_ids[owner],
                    "name": name,
                    "trigger_type": trigger.value,
                    "step_count": len(steps),
                },
                created,
            )
        )

    for number, (workflow_index, status, failing_position) in enumerate(RUNS):
        _add_run(data, number, workflow_index, status, failing_position, workflow_steps)
    return data


def _add_run(
    data: SeedData,
    number: int,
    workflow_index: int,
    status: RunStatus,
    failing_position: int | None,
    workflow_steps: list[list[tuple[UUID, int, str]]],
) -> None:
    workflow_id = data.workflows[workflow_index][0]
    owner_id = data.workflows[workflow_index][1]
    trigger = data.workflows[workflow_index][4]
    run_id = seed_id("run", number)
    created = at(24 * 60 + number * 90)
    started = created + datetime.timedelta(seconds=5) if status is not RunStatus.PENDING else None
    if status is RunStatus.CANCELLED:
        started = None  # cancelled while still pending
    clock = started or created
    error = None
    inputs = {"run_number": number}
    outputs = {"ok": True}
    idempotency_key = f"seed-{number}"

    def event(
        new: RunStatus,
        previous: RunStatus | None,
        when: datetime.datetime,
        finished: datetime.datetime | None = None,
        error: str | None = None,
    ) -> None:
        kind = events.RUN_EVENT_BY_STATUS[new.value]
        # The run's row after this change, as the real event is built from it.
        run = {
            "id": run_id,
            "workflow_id": workflow_id,
            "status": new.value,
            "error": error,
            "started_at": started,
            "finished_at": finished,
            "trigger_type": trigger,
            "triggered_by_user_id": owner_id,
            "inputs": inputs,
            "idempotency_key": idempotency_key,
            "outputs": outputs if new is RunStatus.COMPLETED else None,
        }
        payload = events.run_payload(run, previous.value if previous else None)
        data.events.append(
            (
                seed_id("event", kind, run_id),
                events.WORKFLOW_RUN,
                run_id,
                kind,
                payload,
                when,
            )
        )

    event(RunStatus.PENDING, None, created)
    if started is not None:
        event(RunStatus.RUNNING, RunStatus.PENDING, started)
        steps = workflow_steps[workflow_index]
        # A running run is part-way through: its last step is still running.
        last = len(steps) - 1 if status is RunStatus.RUNNING else None
        for step_id, position, step_name in steps:
            attempts = (
                2 if position == failing_position or (position == 0 and number % 3 == 0) else 1
            )
            if position == failing_position:
                attempts = 3
            for attempt in range(1, attempts + 1):
                step_started = clock
                clock = clock + datetime.timedelta(seconds=3)
                if position == last and attempt == attempts:
                    log_status, finished, log_error = RunStatus.RUNNING, None, None
                elif attempt < attempts or position == failing_position:
                    log_status, finished = RunStatus.FAILED, clock
                    log_error = f"{step_name}: upstream timed out (attempt {attempt})"
                else:
                    log_status, finished, log_error = RunStatus.COMPLETED, clock, None
                data.logs.append(
                    (
                        seed_id("log", run_id, position, attempt),
                        run_id,
                        step_id,
                        position,
                        step_name,
                        attempt,
                        log_status.value,
                        dumps({"attempt": attempt}),
                        dumps({"ok": True}) if log_status is RunStatus.COMPLETED else None,
                        log_error,
                        step_started,
                        finished,
                        step_started,
                    )
                )
                error = log_error or error
            if position in (failing_position, last):
                break
    finished = clock if status.is_terminal else None
    if status is RunStatus.COMPLETED:
        event(status, RunStatus.RUNNING, clock, finished=finished)
    elif status is RunStatus.FAILED:
        event(status, RunStatus.RUNNING, clock, finished=finished, error=error)
    elif status is RunStatus.CANCELLED:
        finished = created + datetime.timedelta(minutes=1)
        event(status, RunStatus.PENDING, finished, finished=finished)
    data.runs.append(
        (
            run_id,
            workflow_id,
            status.value,
            trigger,
            owner_id,
            dumps(inputs),
            dumps(outputs) if status is RunStatus.COMPLETED else None,
            error if status is RunStatus.FAILED else None,
            idempotency_key,
            started,
            finished,
            created,
        )
    )


UPSERTS: dict[str, LiteralString] = {
    "users": """
        INSERT INTO users (id, email, display_name, role, is_active, created_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $6)
        ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email,
            display_name = EXCLUDED.display_name, role = EXCLUDED.role,
            is_active = EXCLUDED.is_active, created_at = EXCLUDED.created_at
    """,
    "workflows": """
        INSERT INTO workflows (id, owner_id, name, description, trigger_type, trigger_config,
                               is_active, created_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $8)
        ON CONFLICT (id) DO UPDATE SET owner_id = EXCLUDED.owner_id, name = EXCLUDED.name,
            description = EXCLUDED.description, trigger_type = EXCLUDED.trigger_type,
            trigger_config = EXCLUDED.trigger_config, is_active = EXCLUDED.is_active,
            created_at = EXCLUDED.created_at
    """,
    "workflow_steps": """
        INSERT INTO workflow_steps (id, workflow_id, position, name, action_type, config,
                                    retry_policy, created_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $8)
        ON CONFLICT (id) DO UPDATE SET workflow_id = EXCLUDED.workflow_id,
            position = EXCLUDED.position, name = EXCLUDED.name,
            action_type = EXCLUDED.action_type, config = EXCLUDED.config,
            retry_policy = EXCLUDED.retry_policy, created_at = EXCLUDED.created_at
    """,
    "workflow_runs": """
        INSERT INTO workflow_runs (id, workflow_id, status, trigger_type, triggered_by_user_id,
                                   inputs, outputs, error, idempotency_key, started_at,
                                   finished_at, created_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9, $10, $11, $12, $12)
        ON CONFLICT (id) DO UPDATE SET workflow_id = EXCLUDED.workflow_id,
            status = EXCLUDED.status, trigger_type = EXCLUDED.trigger_type,
            triggered_by_user_id = EXCLUDED.triggered_by_user_id, inputs = EXCLUDED.inputs,
            outputs = EXCLUDED.outputs, error = EXCLUDED.error,
            idempotency_key = EXCLUDED.idempotency_key, started_at = EXCLUDED.started_at,
            finished_at = EXCLUDED.finished_at, created_at = EXCLUDED.created_at
    """,
    "run_step_logs": """
        INSERT INTO run_step_logs (id, run_id, step_id, step_position, step_name, attempt,
                                   status, input, output, error, started_at, finished_at,
                                   created_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10, $11, $12, $13, $13)
        ON CONFLICT (id) DO UPDATE SET run_id = EXCLUDED.run_id, step_id = EXCLUDED.step_id,
            step_position = EXCLUDED.step_position, step_name = EXCLUDED.step_name,
            attempt = EXCLUDED.attempt, status = EXCLUDED.status, input = EXCLUDED.input,
            output = EXCLUDED.output, error = EXCLUDED.error, started_at = EXCLUDED.started_at,
            finished_at = EXCLUDED.finished_at, created_at = EXCLUDED.created_at
    """,
}


async def write(data: SeedData) -> dict[str, int]:
    """Upsert the seed rows in the current transaction; returns rows per table."""
    connection = DB.require_transaction().connection
    batches = {
        "users": data.users,
        "workflows": data.workflows,
        "workflow_steps": data.steps,
        "workflow_runs": data.runs,
        "run_step_logs": data.logs,
    }
    for table, rows in batches.items():
        await connection.executemany(UPSERTS[table], rows)
    # Events are immutable: inserted once, never rewritten (flowforge/outbox.py).
    await outbox.record_fixed_events(data.events)
    return {**{table: len(rows) for table, rows in batches.items()}, "outbox": len(data.events)}


async def seed() -> None:
    """Create (or restore) the development seed data. Safe to run repeatedly.

    Also gives the seeded admin an API key (once) and ensures the Piccolo Admin
    login (flowforge/commands/bootstrap.py), so a new user can call the API right away.
    """
    from flowforge.commands import bootstrap

    async with DB.transaction():
        counts = await write(build())
        key_message = await bootstrap.ensure_bootstrap_key()
    print("seeded: " + ", ".join(f"{count} {table}" for table, count in counts.items()))
    print(key_message)
    await bootstrap.create_admin_login()
