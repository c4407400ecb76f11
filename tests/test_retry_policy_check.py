"""Retry policies checked by the database (issue 18): ``workflow_steps_retry_policy_valid``.

The CHECK (``flowforge_retry_policy_valid``, piccolo_migrations/flowforge_2026_12_07t23_00_00_000000.py)
and the API's model (``flowforge.api.schemas.RetryPolicy``) must accept the same
policies: the parametrised test runs both over one list, so neither can drift
alone. Raw SQL and the ORM are refused with the constraint's name; the
migrations step back and forwards, and existing bad policies stop the VALIDATE
naming their steps.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pydantic
import pytest

from flowforge.api.schemas import RetryPolicy
from flowforge.db.engine import DB
from flowforge.db.tables import User, Workflow, WorkflowStep
from tests import support
from tests.test_migrations import inventory

CHECK = "workflow_steps_retry_policy_valid"
NOT_VALID_MIGRATION_ID = "2026-12-07T23:00:00:000000"
VALIDATE_MIGRATION_ID = "2026-12-07T23:00:10:000000"

# (JSON text, accepted?): what the API takes, and what it refuses and why.
POLICIES = [
    ("{}", True),
    ('{"max_attempts": 1}', True),
    ('{"max_attempts": 100}', True),
    ('{"max_attempts": 3.0}', True),  # JSON Schema's integer: 3.0 is 3
    ('{"max_attempts": 3, "backoff": {}, "jitter": 0}', True),
    ('{"backoff": {"initial_seconds": 0.001, "max_seconds": 0.001, "multiplier": 1}}', True),
    ('{"backoff": {"initial_seconds": 86400, "max_seconds": 2592000, "multiplier": 10}}', True),
    ('{"backoff": {"initial_seconds": 300}}', True),  # max defaults to 300
    ('{"backoff": {"max_seconds": 1}}', True),  # initial defaults to 1
    ('{"jitter": 1}', True),
    ('{"jitter": 0.25}', True),
    ('{"jitter": 1e-400}', True),  # 0.0 once read as a double
    ('{"jitter": 1.00000000000000000001}', True),  # 1.0 as a double
    (
        '{"max_attempts": 5, "backoff": {"initial_seconds": 2, "max_seconds": 60, '
        '"multiplier": 3}, "jitter": 0.1}',
        True,
    ),
    ("[]", False),
    ('"x"', False),
    ("null", False),
    ('{"retries": 3}', False),  # unknown key
    ('{"max_attempts": 3, "note": "x"}', False),
    ('{"max_attempts": 0}', False),
    ('{"max_attempts": 101}', False),
    ('{"max_attempts": 2.5}', False),
    ('{"max_attempts": "3"}', False),
    ('{"max_attempts": true}', False),
    ('{"max_attempts": null}', False),
    ('{"max_attempts": 1e400}', False),
    ('{"jitter": -0.1}', False),
    ('{"jitter": 1.5}', False),
    ('{"jitter": "0.5"}', False),
    ('{"jitter": true}', False),
    ('{"jitter": null}', False),
    ('{"backoff": null}', False),
    ('{"backoff": []}', False),
    ('{"backoff": {"initial": 1}}', False),
    ('{"backoff": {"initial_seconds": 0}}', False),
    ('{"backoff": {"initial_seconds": 1e-400}}', False),  # 0.0 as a double
    ('{"backoff": {"initial_seconds": 86401, "max_seconds": 100000}}', False),
    ('{"backoff": {"max_seconds": 2592001}}', False),
    ('{"backoff": {"multiplier": 0.5}}', False),
    ('{"backoff": {"multiplier": 11}}', False),
    ('{"backoff": {"multiplier": "2"}}', False),
    ('{"backoff": {"initial_seconds": 10, "max_seconds": 5}}', False),
    ('{"backoff": {"initial_seconds": 301}}', False),  # above the default max
]


def api_accepts(text: str) -> bool:
    # As the API reads a body: json.loads, then the model (Python mode).
    try:
        RetryPolicy.model_validate(json.loads(text))
    except pydantic.ValidationError:
        return False
    return True


@pytest.mark.usefixtures("db")
@pytest.mark.parametrize(("text", "accepted"), POLICIES, ids=[text for text, _ in POLICIES])
async def test_the_database_check_and_the_api_model_accept_the_same_policies(
    text: str, accepted: bool
) -> None:
    rows = await DB.fetch("SELECT flowforge_retry_policy_valid($1::jsonb) AS ok", text)
    assert (api_accepts(text), rows[0]["ok"]) == (accepted, accepted)
    if accepted:
        # What the API stores (its model, dumped) passes the check too.
        stored = RetryPolicy.model_validate(json.loads(text)).model_dump(exclude_unset=True)
        rows = await DB.fetch(
            "SELECT flowforge_retry_policy_valid($1::jsonb) AS ok", json.dumps(stored)
        )
        assert rows[0]["ok"] is True


async def make_workflow() -> uuid.UUID:
    [user] = (
        await User.insert(User(email=f"{uuid.uuid4().hex[:8]}@example.com", display_name="R"))
        .returning(User.id)
        .run()
    )
    [workflow] = (
        await Workflow.insert(Workflow(owner_id=user["id"], name="retries"))
        .returning(Workflow.id)
        .run()
    )
    workflow_id: uuid.UUID = workflow["id"]
    return workflow_id


@pytest.mark.usefixtures("db")
async def test_raw_sql_cannot_store_a_policy_the_api_refuses() -> None:
    workflow = await make_workflow()
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await DB.fetch(
            "INSERT INTO workflow_steps (workflow_id, position, name, action_type, retry_policy) "
            """VALUES ($1, 0, 's', 'a', '{"max_attempts": 3, "backoff": {"multiplier": 0}}')""",
            workflow,
        )
    assert caught.value.constraint_name == CHECK
    assert CHECK in str(caught.value)
    # The ORM (the domain code's path) likewise.
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await WorkflowStep.insert(
            WorkflowStep(
                workflow_id=workflow,
                position=0,
                name="s",
                action_type="a",
                retry_policy={"max_attempts": "3"},
            )
        ).run()
    assert caught.value.constraint_name == CHECK
    await DB.fetch(
        "INSERT INTO workflow_steps (workflow_id, position, name, action_type, retry_policy) "
        """VALUES ($1, 0, 's', 'a', '{"max_attempts": 3, "backoff": {"multiplier": 1.5}}')""",
        workflow,
    )


@pytest.fixture
async def scratch_url() -> AsyncIterator[str]:
    async with support.scratch_database("retry_check") as url:
        yield url


async def check_state(url: str) -> tuple[bool | None, bool]:
    """(the constraint validated? None: absent, the function exists?)."""
    connection = await asyncpg.connect(url)
    try:
        validated = await connection.fetchval(
            "SELECT convalidated FROM pg_constraint WHERE conname = $1", CHECK
        )
        function = await connection.fetchval(
            "SELECT to_regprocedure('flowforge_retry_policy_valid(jsonb)') IS NOT NULL"
        )
    finally:
        await connection.close()
    return validated, function


async def test_the_migrations_step_back_and_forwards_and_bad_rows_stop_the_validate(
    scratch_url: str,
) -> None:
    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    built = await inventory(scratch_url)
    assert CHECK in built["constraints"]
    assert await check_state(scratch_url) == (True, True)

    def back() -> None:
        support.piccolo(
            "migrations", "backwards", "flowforge", f"--migration_id={NOT_VALID_MIGRATION_ID}",
            "--auto_agree", database_url=scratch_url,
        )  # fmt: skip

    back()
    assert await check_state(scratch_url) == (None, False)
    assert CHECK not in (await inventory(scratch_url))["constraints"]

    # A policy stored by raw SQL before the check (the API never took it).
    connection = await asyncpg.connect(scratch_url)
    try:
        [user] = await connection.fetch(
            "INSERT INTO users (email, display_name) VALUES ('r@example.com', 'R') RETURNING id"
        )
        workflow = await connection.fetchval(
            "INSERT INTO workflows (owner_id, name) VALUES ($1, 'w') RETURNING id", user["id"]
        )
        await connection.execute(
            "INSERT INTO workflow_versions (workflow_id, version) VALUES ($1, 1) "
            "ON CONFLICT DO NOTHING",
            workflow,
        )
        bad = await connection.fetchval(
            "INSERT INTO workflow_steps (workflow_id, position, name, action_type, retry_policy) "
            """VALUES ($1, 0, 's', 'a', '{"max_attempts": 3, "note": 1}') RETURNING id""",
            workflow,
        )

        # Forwards: the constraint is added (NOT VALID), the VALIDATE fails and
        # names the step; the constraint stays, checking new rows.
        failed = support.piccolo(
            "migrations", "forwards", "all", database_url=scratch_url, check=False
        )
        output = failed.stdout + failed.stderr
        assert failed.returncode != 0
        assert str(bad) in output, output
        assert CHECK in output and "session_replication_role" in output
        assert await check_state(scratch_url) == (False, True)
        with pytest.raises(asyncpg.CheckViolationError):
            await connection.execute(
                "INSERT INTO workflow_steps (workflow_id, position, name, action_type, "
                """retry_policy) VALUES ($1, 1, 's', 'a', '{"jitter": 2}')""",
                workflow,
            )

        # The operator fixes the row (past the immutability trigger), forwards completes.
        await connection.execute("SET session_replication_role = replica")
        await connection.execute(
            """UPDATE workflow_steps SET retry_policy = '{"max_attempts": 3}' WHERE id = $1""",
            bad,
        )
        await connection.execute("RESET session_replication_role")
    finally:
        await connection.close()
    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    assert await check_state(scratch_url) == (True, True)
    assert await inventory(scratch_url) == built

    # And back and forwards once more, from a completed forwards.
    back()
    assert await check_state(scratch_url) == (None, False)
    support.piccolo("migrations", "forwards", "all", database_url=scratch_url)
    assert await inventory(scratch_url) == built
