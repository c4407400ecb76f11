"""Development seed data: `piccolo flowforge seed`.

3 users (admin, developer, viewer), 5 workflows with steps, 10 runs in mixed
statuses with their step attempts.

Written through the domain functions the API uses (``users.create_user``,
``workflows.create_workflow``, ``runs.trigger_run`` / ``transition_run`` /
``append_step_log``), so every row has exactly the events a real one has, and
every timestamp is the database's clock at seeding time: the relay publishes
the events at once (no months of outbox lag), the reaper leaves the running
runs alone for ``RUN_LEASE_TIMEOUT`` like any other run, and nothing is old
enough to be pruned.

Idempotent by natural keys (the domain functions choose ids, as for the API):
a user is found by email, a workflow by owner and name, a run by its
workflow and ``Idempotency-Key`` (``seed-<n>``). What exists is left as it is,
so a second seed writes nothing and emits no event, and a seed row that was
edited, advanced or pruned is never overwritten or brought back without its
events: a run that is gone is triggered again as a new run, with all of its
events. Each run is written in a transaction of its own, so runs are
ordered in time like real ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from piccolo.query.functions.string import Lower
from piccolo.querystring import QueryString

from flowforge.core.errors import WorkflowInactiveError
from flowforge.db.engine import DB
from flowforge.db.tables import Role, RunStatus, TriggerType, User, Workflow
from flowforge.domain import history, runs, users, workflows

# Who the seeded runs' history names (flowforge.domain.history).
ACTOR = "cli:seed"

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

RETRY_POLICY = {"max_attempts": 3, "backoff": {"initial_seconds": 10, "multiplier": 2.0}}

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
class SeedReport:
    """What one seed run created (0 everywhere when run again)."""

    users: int = 0
    workflows: int = 0
    runs: int = 0
    step_logs: int = 0
    skipped: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"seeded: {self.users} users, {self.workflows} workflows, {self.runs} runs, "
            f"{self.step_logs} step logs (new; existing seed data is left as it is)"
        )


async def _ensure_user(email: str, name: str, role: Role, report: SeedReport) -> UUID:
    DB.require_transaction()
    found = await (
        User.select(User.id)
        .where(Lower(User.email) == Lower(QueryString("{}", email)))
        .first()
        .run()
    )
    if found is not None:
        existing: UUID = found["id"]
        return existing
    report.users += 1
    user = await users.create_user(email, name, role)
    user_id: UUID = user["id"]
    return user_id


async def _ensure_workflows(report: SeedReport) -> list[tuple[UUID, UUID, TriggerType]]:
    """Users and workflows (one transaction); returns (workflow id, owner id, trigger)."""
    ensured: list[tuple[UUID, UUID, TriggerType]] = []
    async with DB.transaction():
        user_ids = {
            email: await _ensure_user(email, name, role, report) for email, name, role in USERS
        }
        for name, owner, trigger, trigger_config, steps in WORKFLOWS:
            owner_id = user_ids[owner]
            row = await (
                Workflow.select(Workflow.id, Workflow.trigger_type)
                .where((Workflow.owner_id == owner_id) & (Workflow.name == name))
                .order_by(Workflow.created_at, Workflow.id)
                .first()
                .run()
            )
            if row is None:
                report.workflows += 1
                created = await workflows.create_workflow(
                    workflows.WorkflowSpec(
                        owner_id=owner_id,
                        name=name,
                        description=f"Seeded example: {name.lower()}.",
                        trigger_type=trigger,
                        trigger_config=trigger_config,
                        steps=[
                            workflows.StepSpec(
                                position=position,
                                name=step_name,
                                action_type=action,
                                config=config,
                                retry_policy=RETRY_POLICY,
                            )
                            for position, (step_name, action, config) in enumerate(steps)
                        ],
                    )
                )
                ensured.append((created["id"], owner_id, trigger))
            else:
                ensured.append((row["id"], owner_id, TriggerType(row["trigger_type"])))
    return ensured


def _attempts(number: int, position: int, failing_position: int | None) -> int:
    if position == failing_position:
        return 3
    return 2 if position == 0 and number % 3 == 0 else 1


async def _log_attempts(
    run_id: UUID,
    number: int,
    status: RunStatus,
    failing_position: int | None,
    step_names: list[str],
) -> tuple[int, str | None]:
    """Log the run's step attempts as an executor would; returns (count, last error)."""
    logged = 0
    error: str | None = None
    # A running run is part-way through: its last step is still running.
    last = len(step_names) - 1 if status is RunStatus.RUNNING else None
    for position, step_name in enumerate(step_names):
        attempts = _attempts(number, position, failing_position)
        for attempt in range(1, attempts + 1):
            if position == last and attempt == attempts:
                outcome, output, attempt_error = RunStatus.RUNNING, None, None
            elif attempt < attempts or position == failing_position:
                outcome, output = RunStatus.FAILED, None
                attempt_error = f"{step_name}: upstream timed out (attempt {attempt})"
            else:
                outcome, output, attempt_error = RunStatus.COMPLETED, {"ok": True}, None
            await runs.append_step_log(
                run_id,
                step_position=position,
                status=outcome,
                input={"attempt": attempt},
                output=output,
                error=attempt_error,
            )
            logged += 1
            error = attempt_error or error
        if position in (failing_position, last):
            break
    return logged, error


async def _seed_run(
    number: int,
    workflow: tuple[UUID, UUID, TriggerType],
    status: RunStatus,
    failing_position: int | None,
    step_names: list[str],
    report: SeedReport,
) -> None:
    """Trigger run `number` and take it to `status`, in one transaction, unless it exists."""
    workflow_id, owner_id, trigger = workflow
    async with DB.transaction():
        await history.set_actor(ACTOR)
        try:
            run, created = await runs.trigger_run(
                workflow_id,
                inputs={"run_number": number},
                trigger_type=trigger,
                triggered_by=owner_id,
                idempotency_key=f"seed-{number}",
            )
        except WorkflowInactiveError:
            report.skipped.append(f"run seed-{number}: its workflow is deactivated")
            return
        if not created:
            return
        report.runs += 1
        run_id = run["id"]
        if status is RunStatus.PENDING:
            return
        if status is RunStatus.CANCELLED:
            await runs.transition_run(run_id, "cancel", error="Superseded by a newer run.")
            return
        await runs.transition_run(run_id, "start")
        logged, error = await _log_attempts(run_id, number, status, failing_position, step_names)
        report.step_logs += logged
        if status is RunStatus.COMPLETED:
            await runs.transition_run(run_id, "complete", outputs={"ok": True})
        elif status is RunStatus.FAILED:
            await runs.transition_run(run_id, "fail", error=error or "failed")


async def write() -> SeedReport:
    """Create whatever seed data is missing; returns what was created."""
    report = SeedReport()
    ensured = await _ensure_workflows(report)
    for number, (workflow_index, status, failing_position) in enumerate(RUNS):
        step_names = [step[0] for step in WORKFLOWS[workflow_index][4]]
        await _seed_run(
            number, ensured[workflow_index], status, failing_position, step_names, report
        )
    return report


async def seed() -> None:
    """Create the development seed data (users, workflows, runs). Safe to run repeatedly.

    Also gives the seeded admin an API key (once) and ensures the Piccolo Admin
    login (flowforge/commands/bootstrap.py), so a new user can call the API right away.
    """
    from flowforge.commands import bootstrap

    report = await write()
    async with DB.transaction():
        key_message = await bootstrap.ensure_bootstrap_key()
    print(report.describe())
    for note in report.skipped:
        print(f"  skipped {note}")
    print(key_message)
    await bootstrap.create_admin_login()
