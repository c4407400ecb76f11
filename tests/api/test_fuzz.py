"""Schema-driven fuzzing of the whole /api/v1 surface with schemathesis (hypothesis underneath).

Every operation of the app's own OpenAPI spec gets generated requests, both
valid ones (positive) and ones that break the schema (negative: wrong types,
unknown enum values, missing fields, out-of-range numbers, oversized strings),
against the app under real uvicorn on the test database, with an admin key.
Path parameters are sometimes swapped for ids that exist, so generated bodies
reach real workflows, runs and attempts instead of stopping at a 404.

Passes when: no response is a 5xx; every error is in the one error shape;
responses match the documented schemas; and afterwards every row has the
domain event of its creation (no partial write got through).

Deterministic (``derandomize=True``, no example database) and bounded: the
figures are written to tests/artifacts/fuzz-report.json and printed at the end
of the test session.

A second test runs schemathesis's own runner with every check (schema-valid
requests accepted, invalid ones rejected, documented statuses, headers and
schemas, Allow on 405, auth enforced, use after delete...) and every phase
(examples, coverage, fuzzing, stateful sequences that follow the links it
infers): it must report zero findings. tests/api/schemathesis.toml names the
two rules JSON Schema cannot state.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from typing import Any

import asyncpg
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from flowforge.api.app import create_app
from flowforge.db.engine import DB
from flowforge.db.tables import Role
from tests.api.conftest import Caller, make_caller
from tests.live import live_server
from tests.support import REPO_ROOT

ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
EXAMPLES_PER_OPERATION_AND_MODE = 25
MODES = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]


@pytest.fixture
async def world(db: None) -> dict[str, Any]:
    """Existing objects for generated requests to hit: users, keys, a workflow, runs, attempts."""
    from flowforge.domain import api_keys, limits, runs, workflows

    admin = await make_caller("fuzz-admin@example.com", Role.ADMIN)
    developer = await make_caller("fuzz-dev@example.com", Role.DEVELOPER)
    async with DB.transaction():
        spare_key, _ = await api_keys.create_api_key(
            developer.user_id, name="spare", scopes=["read"]
        )
        workflow = await workflows.create_workflow(
            workflows.WorkflowSpec(
                owner_id=developer.user_id,
                name="fuzzed",
                steps=[
                    workflows.StepSpec(position=i, name=f"s{i}", action_type="x") for i in range(3)
                ],
            )
        )
        pending, _ = await runs.trigger_run(workflow["id"], inputs={})
        running, _ = await runs.trigger_run(workflow["id"], inputs={"n": 1})
        await runs.transition_run(running["id"], "start")
        log = await runs.append_step_log(running["id"], step_position=0)
        limit = await limits.create_limit("fuzz-limit", 2)
    return {
        "admin": admin,
        "ids": {
            "workflow_id": [str(workflow["id"])],
            "run_id": [str(pending["id"]), str(running["id"])],
            "user_id": [str(developer.user_id), str(admin.user_id)],
            "api_key_id": [str(spare_key["id"])],
            "step_log_id": [str(log["id"])],
            "concurrency_limit": ["fuzz-limit", str(limit["id"])],
        },
    }


def is_error_shape(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and set(body) == {"error"}
        and isinstance(body["error"].get("code"), str)
        and isinstance(body["error"].get("message"), str)
        and isinstance(body["error"].get("details"), dict)
    )


def fuzz_operation(
    operation: Any,
    mode: schemathesis.GenerationMode,
    *,
    base_url: str,
    session: requests.Session,
    known_ids: dict[str, list[str]],
    statuses: collections.Counter[int],
    server_errors: list[str],
) -> None:
    label = f"{operation.method.upper()} {operation.path}"

    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def run(case: Any, data: st.DataObject) -> None:
        for name in list(case.path_parameters or {}):
            if name in known_ids and data.draw(st.booleans(), label=f"real {name}"):
                case.path_parameters[name] = data.draw(st.sampled_from(known_ids[name]))
        response = case.call(base_url=base_url, session=session, timeout=30)
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            server_errors.append(f"{label}: {response.status_code} {response.text[:200]}")
        case.validate_response(
            response,
            checks=[not_a_server_error, content_type_conformance, response_schema_conformance],
        )
        if response.status_code >= 400:
            assert is_error_shape(response.json()), (label, response.text[:300])

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        # Nothing to break (e.g. negative cases of an operation without inputs).
        assert mode is schemathesis.GenerationMode.NEGATIVE, label


def test_fuzz_the_openapi_spec(world: dict[str, Any], database_url: str) -> None:
    admin: Caller = world["admin"]
    schema = schemathesis.openapi.from_dict(create_app().openapi())
    per_operation: dict[str, collections.Counter[int]] = {}
    server_errors: list[str] = []
    started = time.monotonic()
    with live_server(database_url, ARTIFACTS / "fuzz-uvicorn.log") as base_url:
        session = requests.Session()
        session.headers.update(admin.headers)
        for result in schema.get_all_operations():
            operation = result.ok()
            label = f"{operation.method.upper()} {operation.path}"
            counter = per_operation.setdefault(label, collections.Counter())
            for mode in MODES:
                fuzz_operation(
                    operation,
                    mode,
                    base_url=base_url,
                    session=session,
                    known_ids=world["ids"],
                    statuses=counter,
                    server_errors=server_errors,
                )
    elapsed = time.monotonic() - started
    statuses: collections.Counter[int] = sum(per_operation.values(), collections.Counter())
    report = {
        "requests": sum(statuses.values()),
        "server_errors": sum(n for status, n in statuses.items() if status >= 500),
        "operations": len(per_operation),
        "examples_per_operation_and_mode": EXAMPLES_PER_OPERATION_AND_MODE,
        "modes": [mode.value for mode in MODES],
        "seconds": round(elapsed, 1),
        "statuses": dict(sorted(statuses.items())),
        "per_operation": {label: dict(sorted(c.items())) for label, c in per_operation.items()},
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "fuzz-report.json").write_text(json.dumps(report, indent=2))
    assert server_errors == []
    assert report["requests"] > 0
    assert asyncio.run(unevented_rows(database_url)) == {}


# (table rows, their creation events): after any sequence of requests these
# must match, or some request wrote half of its change.
EVENTED = {
    "users": "SELECT count(*) FROM outbox WHERE event_type = 'user.created'",
    "api_keys": "SELECT count(*) FROM outbox WHERE event_type = 'api_key.created'",
    "workflow_runs": "SELECT count(*) FROM outbox WHERE event_type = 'run.created'",
    "workflows": (
        "SELECT count(*) FILTER (WHERE event_type = 'workflow.created')"
        " - count(*) FILTER (WHERE event_type = 'workflow.deleted') FROM outbox"
    ),
    "run_step_logs": (
        "SELECT count(DISTINCT payload->>'step_log_id') FROM outbox"
        " WHERE event_type = 'run.step_logged'"
    ),
}


async def unevented_rows(database_url: str) -> dict[str, tuple[int, int]]:
    """Tables whose row count differs from their creation events' count."""
    connection = await asyncpg.connect(database_url)
    try:
        mismatches = {}
        for table, events_sql in EVENTED.items():
            rows = await connection.fetchval(f"SELECT count(*) FROM {table}")
            events = await connection.fetchval(events_sql)
            if rows != events:
                mismatches[table] = (rows, events)
        return mismatches
    finally:
        await connection.close()


def test_the_docs_state_the_fuzzing_bound() -> None:
    """docs/testing.md gives the bound, which changes only here, not a count that drifts
    with every operation added (its figures are printed at the end of the run)."""
    readme = " ".join((REPO_ROOT / "docs" / "testing.md").read_text().split())
    n = EXAMPLES_PER_OPERATION_AND_MODE
    assert f"at most {n} valid and {n} schema-breaking requests per operation" in readme


# -- all checks, all phases (schemathesis's own runner) --------------------------------------

MAX_EXAMPLES = 20
SCHEMATHESIS_CONFIG = REPO_ROOT / "tests" / "api" / "schemathesis.toml"


def test_schemathesis_all_checks_and_stateful_phases_find_nothing(
    world: dict[str, Any], database_url: str
) -> None:
    """`schemathesis run` with every check and every phase (stateful included): zero findings."""
    import subprocess
    import sys
    from pathlib import Path

    admin: Caller = world["admin"]
    executable = Path(sys.executable).parent / "schemathesis"
    with live_server(database_url, ARTIFACTS / "schemathesis-uvicorn.log") as base_url:
        started = time.monotonic()
        result = subprocess.run(
            [
                str(executable), "--config-file", str(SCHEMATHESIS_CONFIG),
                "run", f"{base_url}/openapi.json",
                "--checks", "all",
                "--phases", "examples,coverage,fuzzing,stateful",
                "--max-examples", str(MAX_EXAMPLES),
                "--seed", "20261130",
                "--generation-deterministic",
                "--workers", "1",
                "--request-timeout", "30",
                "--header", f"Authorization: Bearer {admin.key}",
                "--report", "ndjson",
                "--report-ndjson-path", str(ARTIFACTS / "schemathesis-events.ndjson"),
                "--no-color",
            ],
            capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    (ARTIFACTS / "schemathesis-output.txt").write_text(result.stdout + result.stderr)
    report = schemathesis_figures(ARTIFACTS / "schemathesis-events.ndjson", elapsed)
    (ARTIFACTS / "schemathesis-report.json").write_text(json.dumps(report, indent=2))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert report["findings"] == 0
    assert report["server_errors"] == 0
    assert report["requests"] > 1000
    assert set(report["phases"]) == {"examples", "coverage", "fuzzing", "stateful"}
    assert asyncio.run(unevented_rows(database_url)) == {}


def schemathesis_figures(events: Any, elapsed: float) -> dict[str, Any]:
    """Requests, statuses, checks run and findings, from schemathesis's NDJSON events."""
    statuses: collections.Counter[int] = collections.Counter()
    checks: collections.Counter[str] = collections.Counter()
    phases: set[str] = set()
    findings = 0
    for line in events.read_text().splitlines():
        event = json.loads(line)
        if "ScenarioFinished" not in event:
            continue
        scenario = event["ScenarioFinished"]
        phases.add(scenario["phase"])
        recorder = scenario["recorder"]
        for interaction in recorder.get("interactions", {}).values():
            statuses[(interaction.get("response") or {}).get("status_code", 0)] += 1
        for results in recorder.get("checks", {}).values():
            for check in results:
                checks[check["name"]] += 1
                findings += check["status"] != "success"
    return {
        "requests": sum(statuses.values()),
        "findings": findings,
        "server_errors": sum(n for status, n in statuses.items() if status >= 500),
        "seconds": round(elapsed, 1),
        "phases": sorted(phases),
        "checks": dict(sorted(checks.items())),
        "statuses": dict(sorted(statuses.items())),
    }
