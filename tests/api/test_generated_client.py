"""A client generated from /openapi.json drives a run's whole life (issue 15).

openapi-python-client (the most used Python generator) is run as a user would,
with the docs' command, against the app's live /openapi.json under real
uvicorn; any warning (a model or operation it could not generate) fails the
test. The generated package is then imported and used over real HTTP: create a
workflow with steps, trigger with inputs (and replay), start, append and finish
attempts, complete with outputs, list, read, and revoke a key.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import Caller
from tests.live import live_server
from tests.support import REPO_ROOT

ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
README_URL = "http://127.0.0.1:8000"
PACKAGE = "flow_forge_client"


def readme_command() -> list[str]:
    """The generate command of docs/api.md's "A generated Python client"."""
    readme = (REPO_ROOT / "docs" / "api.md").read_text()
    [line] = re.findall(r"^openapi-python-client generate .*$", readme, flags=re.MULTILINE)
    return shlex.split(line)


def generate(base_url: str, into: Path) -> Path:
    """Run the docs' command against `base_url` in `into`; the generated project."""
    bin_dir = Path(sys.executable).parent
    command = [
        str(bin_dir / "openapi-python-client"),
        *(arg.replace(README_URL, base_url) for arg in readme_command()[1:]),
        "--fail-on-warning",
    ]
    result = subprocess.run(
        command,
        cwd=into,
        # As in an activated virtualenv: the generator formats with its ruff.
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    project = into / "flow-forge-client"
    assert result.returncode == 0, output
    # Nothing but the one progress line: every warning is something not generated.
    assert output.strip().splitlines() == [f"Generating {project}"], output
    return project


@pytest.fixture
def generated(tmp_path: Path, database_url: str) -> Iterator[tuple[str, Any]]:
    """The live app's base URL and the client package generated from its /openapi.json."""
    with live_server(database_url, ARTIFACTS / "generated-client-uvicorn.log") as base_url:
        project = generate(base_url, tmp_path)
        sys.path.insert(0, str(project))
        try:
            yield base_url, importlib.import_module(PACKAGE)
        finally:
            sys.path.remove(str(project))
            for name in [n for n in sys.modules if n.split(".")[0] == PACKAGE]:
                del sys.modules[name]


def test_a_generated_client_drives_the_whole_life_of_a_run(
    generated: tuple[str, Any], developer: Caller
) -> None:
    base_url, package = generated
    from flow_forge_client.api.api_keys import create_api_key, revoke_api_key
    from flow_forge_client.api.runs import (
        append_step_log,
        cancel_run,
        complete_run,
        finish_step_log,
        get_run,
        list_runs,
        start_run,
        trigger_run,
    )
    from flow_forge_client.api.users import me
    from flow_forge_client.api.workflows import create_workflow
    from flow_forge_client.models import (
        ApiKeyCreate,
        ErrorResponse,
        JsonObject,
        RunComplete,
        RunStatus,
        RunTrigger,
        Scope,
        StepIn,
        StepLogAppend,
        StepLogAppendStatus,
        StepLogFinish,
        StepLogFinishStatus,
        TriggerType,
        WorkflowCreate,
    )

    client = package.AuthenticatedClient(base_url=base_url, token=developer.key)

    # A workflow with its steps (positions given on every step).
    made = create_workflow.sync_detailed(
        client=client,
        body=WorkflowCreate(
            name="Nightly report",
            description="Sends the numbers",
            trigger_type=TriggerType.SCHEDULE,
            trigger_config=JsonObject.from_dict({"cron": "0 2 * * *"}),
            steps=[
                StepIn(
                    position=10,
                    name="Query",
                    action_type="sql.query",
                    config=JsonObject.from_dict({"sql": "select 1"}),
                    retry_policy=JsonObject.from_dict({"max_attempts": 3}),
                ),
                StepIn(position=20, name="Email", action_type="email.send"),
            ],
        ),
    )
    assert made.status_code == 201, made.content
    workflow = made.parsed
    assert workflow.name == "Nightly report"
    assert [(s.position, s.name) for s in workflow.steps] == [(10, "Query"), (20, "Email")]
    assert workflow.steps[0].config.to_dict() == {"sql": "select 1"}

    # Trigger with inputs; the same Idempotency-Key again is a replay of that run.
    inputs = {"date": "2026-11-29", "regions": ["emea", "amer"], "limits": {"rows": 10}}
    trigger = RunTrigger(inputs=JsonObject.from_dict(inputs))
    first = trigger_run.sync_detailed(
        client=client, workflow_id=workflow.id, body=trigger, idempotency_key="nightly-1"
    )
    assert first.status_code == 201, first.content
    assert first.headers["Location"] == f"/api/v1/runs/{first.parsed.id}"
    run = first.parsed
    assert (run.status, run.inputs.to_dict(), run.replayed) == (RunStatus.PENDING, inputs, False)
    again = trigger_run.sync_detailed(
        client=client, workflow_id=workflow.id, body=trigger, idempotency_key="nightly-1"
    )
    assert (again.status_code, again.parsed.id, again.parsed.replayed) == (200, run.id, True)

    assert start_run.sync(client=client, run_id=run.id).status == RunStatus.RUNNING

    # Attempts: one appended running then finished; one appended already failed.
    attempt = append_step_log.sync(
        client=client,
        run_id=run.id,
        body=StepLogAppend(step_position=10, input_=JsonObject.from_dict({"sql": "select 1"})),
    )
    assert (attempt.status, attempt.attempt, attempt.step_name) == (RunStatus.RUNNING, 1, "Query")
    finished = finish_step_log.sync(
        client=client,
        run_id=run.id,
        step_log_id=attempt.id,
        body=StepLogFinish(
            status=StepLogFinishStatus.COMPLETED, output=JsonObject.from_dict({"rows": 1})
        ),
    )
    assert (finished.status, finished.output.to_dict()) == (RunStatus.COMPLETED, {"rows": 1})
    failed = append_step_log.sync(
        client=client,
        run_id=run.id,
        body=StepLogAppend(
            step_position=20, status=StepLogAppendStatus.FAILED, error="SMTP refused"
        ),
    )
    assert (failed.status, failed.error) == (RunStatus.FAILED, "SMTP refused")

    outputs = {"report_url": "https://reports.example.com/nightly/2026-11-29"}
    completed = complete_run.sync(
        client=client, run_id=run.id, body=RunComplete(outputs=JsonObject.from_dict(outputs))
    )
    assert (completed.status, completed.outputs.to_dict()) == (RunStatus.COMPLETED, outputs)

    # Bodies are optional where the API says so: no body at all, not "null".
    bare = trigger_run.sync(client=client, workflow_id=workflow.id)
    assert bare.inputs.to_dict() == {}
    start_run.sync(client=client, run_id=bare.id)
    assert complete_run.sync(client=client, run_id=bare.id).status == RunStatus.COMPLETED
    cancelled = cancel_run.sync(
        client=client, run_id=trigger_run.sync(client=client, workflow_id=workflow.id).id
    )
    assert cancelled.status == RunStatus.CANCELLED

    # List (newest first, filtered) and read with the attempts.
    page = list_runs.sync(client=client, workflow_id=workflow.id, status=RunStatus.COMPLETED)
    assert [r.id for r in page.items] == [bare.id, run.id]
    assert page.next_cursor is None
    detail = get_run.sync(client=client, run_id=run.id)
    assert detail.outputs.to_dict() == outputs
    assert [(s.step_position, s.attempt, s.status) for s in detail.step_logs] == [
        (10, 1, RunStatus.COMPLETED),
        (20, 1, RunStatus.FAILED),
    ]

    # A key issued, used, revoked: then refused, with the error model.
    issued = create_api_key.sync(
        client=client, body=ApiKeyCreate(name="laptop", scopes=[Scope.READ])
    )
    laptop = package.AuthenticatedClient(base_url=base_url, token=issued.key)
    assert me.sync(client=laptop).api_key_id == issued.id
    revoked = revoke_api_key.sync(client=client, api_key_id=issued.id)
    assert revoked.revoked_at is not None
    refused = me.sync_detailed(client=laptop)
    assert refused.status_code == 401
    assert isinstance(refused.parsed, ErrorResponse)
    assert refused.parsed.error.code == "unauthorized"
