"""Each domain operation returns exactly the keys its typed record names.

mypy checks the records statically (flowforge/domain/records.py); the rows they
are built from come from SQL, so this test runs every operation that returns a
record against the real schema and compares the keys it got with the type's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from flowforge.db.engine import DB
from flowforge.db.tables import Role, RunStatus, Scope
from flowforge.domain import api_keys, records, runs, users, workflows

pytestmark = pytest.mark.usefixtures("db")


def keys_of(record_type: Any) -> set[str]:
    return set(record_type.__required_keys__) | set(record_type.__optional_keys__)


def check(record: Mapping[str, Any], record_type: Any, what: str) -> None:
    assert set(record) == keys_of(record_type), (
        f"{what}: extra {sorted(set(record) - keys_of(record_type))}, "
        f"missing {sorted(keys_of(record_type) - set(record))}"
    )


async def test_every_operation_returns_exactly_its_records_keys() -> None:
    async with DB.transaction():
        user = await users.create_user("records@example.com", "Records", Role.DEVELOPER)
        check(user, records.UserRecord, "create_user")
        check(await users.get_user(user["id"]), records.UserRecord, "get_user")
        check(
            await users.update_user(user["id"], display_name="Renamed"),
            records.UserRecord,
            "update_user",
        )
        listed_users, _ = await users.list_users(limit=1)
        check(listed_users[0], records.UserRecord, "list_users")

        key, _ = await api_keys.create_api_key(user["id"], name="k", scopes=[Scope.READ])
        check(key, records.ApiKeyRecord, "create_api_key")
        listed_keys, _ = await api_keys.list_api_keys(limit=1)
        check(listed_keys[0], records.ApiKeyRecord, "list_api_keys")
        check(await api_keys.revoke_api_key(key["id"]), records.ApiKeyRecord, "revoke_api_key")

        spec = workflows.WorkflowSpec(
            owner_id=user["id"], name="Flow", steps=[workflows.StepSpec(0, "a", "noop")]
        )
        workflow = await workflows.create_workflow(spec)
        check(workflow, records.WorkflowWithSteps, "create_workflow")
        check(workflow["steps"][0], records.StepRecord, "create_workflow step")
        got = await workflows.get_workflow(workflow["id"])
        check(got, records.WorkflowWithSteps, "get_workflow")
        check(got["steps"][0], records.StepRecord, "get_workflow step")
        changed = await workflows.update_workflow(workflow["id"], {"name": "Flow 2"})
        check(changed, records.WorkflowWithSteps, "update_workflow")
        replaced = await workflows.replace_steps(
            workflow["id"], [workflows.StepSpec(0, "b", "noop")]
        )
        check(replaced, records.WorkflowWithSteps, "replace_steps")
        listed_workflows, _ = await workflows.list_workflows(limit=1)
        check(listed_workflows[0], records.WorkflowSummary, "list_workflows")

        run, created = await runs.trigger_run(workflow["id"], inputs={}, idempotency_key="k1")
        assert created
        check(run, records.RunRecord, "trigger_run")
        replayed, created = await runs.trigger_run(workflow["id"], inputs={}, idempotency_key="k1")
        assert not created
        check(replayed, records.RunRecord, "trigger_run (replayed)")
        check(await runs.transition_run(run["id"], "start"), records.RunRecord, "transition_run")
        log = await runs.append_step_log(run["id"], step_position=0)
        check(log, records.StepLogRecord, "append_step_log")
        finished = await runs.finish_step_log(run["id"], log["id"], status=RunStatus.COMPLETED)
        check(finished, records.StepLogRecord, "finish_step_log")
        detail = await runs.get_run(run["id"])
        check(detail, records.RunWithLogs, "get_run")
        check(detail["step_logs"][0], records.StepLogRecord, "get_run step log")
        listed_runs, _ = await runs.list_runs(workflow["id"], limit=1)
        check(listed_runs[0], records.RunRecord, "list_runs")


def test_the_key_check_sees_a_stray_key() -> None:
    with pytest.raises(AssertionError, match="extra"):
        check(
            {**dict.fromkeys(keys_of(records.UserRecord)), "key_hash": "x"}, records.UserRecord, "x"
        )
