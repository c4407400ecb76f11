"""Every event type's payload, however it is built, matches flowforge.core.events.CONTRACT.

The domain operations run for real (payloads built in Python by the domain, in
SQL by the run statements, and by the seed and the reaper); then every outbox
row is compared with the contract: its aggregate type and exactly its payload
keys. Run events built in SQL must also carry the same values
:func:`flowforge.core.events.run_payload` gives for the run's row after the change.
"""

from __future__ import annotations

import datetime
from typing import Any
from uuid import UUID

import pytest

from flowforge.commands import seed
from flowforge.core import events
from flowforge.db.engine import DB
from flowforge.db.sql import runs as run_sql
from flowforge.db.tables import Outbox, Role, RunStatus, Scope, WorkflowRun
from flowforge.domain import api_keys, queue, runs, users, workflows
from flowforge.jobs import reaper
from flowforge.outbox import writer as outbox

pytestmark = pytest.mark.usefixtures("db")


async def outbox_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = (
        await Outbox.select(
            Outbox.aggregate_type, Outbox.aggregate_id, Outbox.event_type, Outbox.payload
        )
        .order_by(Outbox.seq)
        .output(load_json=True)
        .run()
    )
    return rows


def normalise(payload: dict[str, Any]) -> dict[str, Any]:
    """Timestamps parsed, ids as text: the same facts whatever the serialisation."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        if key.endswith("_at") and isinstance(value, str):
            out[key] = datetime.datetime.fromisoformat(value)
        elif isinstance(value, UUID):
            out[key] = str(value)
        else:
            out[key] = value
    return out


async def run_row(run_id: UUID) -> dict[str, Any]:
    row: dict[str, Any] = (
        await WorkflowRun.select(*run_sql.RUN_TABLE_COLUMNS)
        .where(WorkflowRun.id == run_id)
        .output(load_json=True)
        .first()
        .run()
    )
    return row


async def exercise_every_event_type() -> list[tuple[str, dict[str, Any], str | None]]:
    """Run the domain through every event type; returns run rows after each run event."""
    after: list[tuple[str, dict[str, Any], str | None]] = []
    async with DB.transaction():
        owner = await users.create_user("owner@example.com", "Owner", Role.DEVELOPER)
        await users.update_user(owner["id"], display_name="Owner Renamed")
        await users.update_user(owner["id"], is_active=False)
        await users.update_user(owner["id"], is_active=True)
        key, _ = await api_keys.create_api_key(owner["id"], name="laptop", scopes=[Scope.READ])
        await api_keys.revoke_api_key(key["id"])
        steps = [workflows.StepSpec(0, "fetch", "http.request")]
        workflow = await workflows.create_workflow(
            workflows.WorkflowSpec(owner_id=owner["id"], name="Flow", steps=steps)
        )
        await workflows.update_workflow(workflow["id"], {"name": "Flow 2"})
        await workflows.update_workflow(workflow["id"], {"is_active": False})
        await workflows.update_workflow(workflow["id"], {"is_active": True})
        await workflows.replace_steps(workflow["id"], steps)
        doomed = await workflows.create_workflow(
            workflows.WorkflowSpec(owner_id=owner["id"], name="Doomed")
        )
        await workflows.delete_workflow(doomed["id"])

        async def run_through(*actions: tuple[str, dict[str, Any]]) -> UUID:
            run, _ = await runs.trigger_run(
                workflow["id"], inputs={"n": 1}, triggered_by=owner["id"], idempotency_key=None
            )
            after.append(("run.created", await run_row(run["id"]), None))
            previous = "pending"
            for action, arguments in actions:
                changed = await runs.transition_run(run["id"], action, **arguments)
                event_type = events.RUN_EVENT_BY_STATUS[changed["status"]]
                after.append((event_type, await run_row(run["id"]), previous))
                previous = changed["status"]
                if changed["status"] == "running":
                    attempt = await runs.append_step_log(run["id"], step_position=0)
                    await runs.finish_step_log(
                        run["id"], attempt["id"], status=RunStatus.COMPLETED, output={"ok": 1}
                    )
            return run["id"]

        await run_through(("start", {}), ("complete", {"outputs": {"done": True}}))
        await run_through(("start", {}), ("fail", {"error": "boom"}))
        await run_through(("cancel", {"error": "not needed"}))
        await run_through(("start", {}), ("cancel", {}))
        stuck = await run_through(("start", {}))
        # The queue (issue 18): claimed (run.started from the claim's SQL), a failed
        # attempt under a retry policy (run.retry_scheduled), cancelled while waiting.
        queued = await workflows.create_workflow(
            workflows.WorkflowSpec(
                owner_id=owner["id"],
                name="Queued",
                steps=[workflows.StepSpec(0, "call", "http.request", {}, {"max_attempts": 2})],
            )
        )
        for number in (1, 2):
            run, _ = await runs.trigger_run(queued["id"], inputs={"n": number})
            after.append(("run.created", await run_row(run["id"]), None))
            [claimed] = await queue.claim_runs("w", workflow_ids=[queued["id"]])
            after.append(("run.started", await run_row(claimed["id"]), "pending"))
        await runs.append_step_log(
            claimed["id"], step_position=0, status=RunStatus.FAILED, error="e"
        )
        after.append(("run.retry_scheduled", await run_row(claimed["id"]), "running"))
        await runs.transition_run(claimed["id"], "cancel")
        after.append(("run.cancelled", await run_row(claimed["id"]), "awaiting_retry"))
        lapsed = (
            await DB.fetch(
                "SELECT id FROM workflow_runs WHERE workflow_id = $1 AND status = 'running'",
                queued["id"],
            )
        )[0]["id"]  # fmt: skip - the first: claimed, then silent
    # The reaper fails a run whose lease expired (here: any running run), and
    # requeues a claimed one (run.retry_scheduled, built in Python).
    report = await reaper.reap_stuck_runs(lease_seconds=0.0)
    assert stuck in report.runs and report.requeued == [lapsed]
    after.append(("run.failed", await run_row(stuck), "running"))
    after.append(("run.retry_scheduled", await run_row(lapsed), "running"))
    async with DB.transaction():
        await seed.write()
    return after


async def test_every_event_type_matches_the_contract() -> None:
    await exercise_every_event_type()
    rows = await outbox_rows()
    seen: set[str] = set()
    for row in rows:
        contract = events.CONTRACT[row["event_type"]]
        assert row["aggregate_type"] == contract.aggregate_type, row
        assert sorted(row["payload"]) == sorted(contract.keys), row
        seen.add(row["event_type"])
    assert seen == set(events.CONTRACT), f"never written: {set(events.CONTRACT) - seen}"


async def test_run_events_built_in_sql_carry_the_run_rows_values() -> None:
    after = await exercise_every_event_type()
    written: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in await outbox_rows():
        written.setdefault((row["event_type"], str(row["aggregate_id"])), []).append(row["payload"])
    for event_type, run, previous in after:
        expected = normalise(events.run_payload(run, previous))
        payloads = written[(event_type, str(run["id"]))]
        assert normalise(payloads[-1]) == expected, event_type


async def test_seeded_run_events_look_like_real_ones() -> None:
    async with DB.transaction():
        await seed.write()
    for row in await outbox_rows():
        if row["event_type"] == "run.created":
            assert row["payload"]["inputs"] is not None
            assert row["payload"]["idempotency_key"].startswith("seed-")


async def test_a_payload_against_the_contract_is_refused() -> None:
    async with DB.transaction():
        owner = await users.create_user("x@example.com", "X", Role.DEVELOPER)
        with pytest.raises(ValueError, match="differ from the contract"):
            await outbox.record_event(events.USER, owner["id"], "user.created", {"user_id": 1})
        with pytest.raises(ValueError, match="unknown event type"):
            await outbox.record_event(events.USER, owner["id"], "user.renamed", {})
