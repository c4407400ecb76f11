"""Every named constraint, violated for real, becomes the right domain error."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from flowforge.core.errors import (
    CONSTRAINT_MESSAGES,
    AppError,
    ConflictError,
    DatabaseUnavailableError,
    InvalidInputError,
    NotFoundError,
    translate_db_error,
    translated_db_errors,
)
from flowforge.db.engine import DB
from tests import support

pytestmark = pytest.mark.usefixtures("db")

HASH = "a" * 64


async def fixtures() -> dict[str, Any]:
    """One of each row, committed, for the violating statements to collide with."""
    user = (
        await DB.fetch(
            "INSERT INTO users (email, display_name) VALUES ('u@example.com', 'U') RETURNING id"
        )
    )[0]["id"]
    workflow = (
        await DB.fetch("INSERT INTO workflows (owner_id, name) VALUES ($1, 'w') RETURNING id", user)
    )[0]["id"]
    step = (
        await DB.fetch(
            "INSERT INTO workflow_steps (workflow_id, position, name, action_type) "
            "VALUES ($1, 0, 's', 'a') RETURNING id",
            workflow,
        )
    )[0]["id"]
    run = (
        await DB.fetch(
            "INSERT INTO workflow_runs (workflow_id, idempotency_key, status, started_at) "
            "VALUES ($1, 'k', 'running', now()) RETURNING id",
            workflow,
        )
    )[0]["id"]
    await DB.fetch(
        "INSERT INTO run_step_logs (run_id, run_created_at, step_id, step_position, step_name) "
        f"VALUES ($1, {RUN_CREATED_AT}, $2, 0, 's')",
        run,
        step,
    )
    await DB.fetch(
        "INSERT INTO api_keys (user_id, name, prefix, key_hash) VALUES ($1, 'k', 'ff_x', $2)",
        user,
        HASH,
    )
    limit = (
        await DB.fetch(
            "INSERT INTO concurrency_limits (name, max_running) VALUES ('shared', 2) RETURNING id"
        )
    )[0]["id"]
    await DB.fetch("UPDATE workflows SET concurrency_limit_id = $1 WHERE id = $2", limit, workflow)
    return {"user": user, "workflow": workflow, "step": step, "run": run, "limit": limit}


MISSING = uuid.UUID(int=1)
# Constraints no statement can violate alone: a stronger one fires first.
IMPLIED = {
    # UNIQUE (id, created_at) is implied by the primary key (id); it exists as the
    # target of run_step_logs_run_id_fkey (tests/test_partitions.py).
    "workflow_runs_id_created_at_key",
}
# Rules a trigger enforces, raising with the rule's name as the constraint
# (RAISE ... USING CONSTRAINT): translated like a table constraint.
TRIGGER_RULES = {"run_history_append_only"}
# Not constraints but triggers that raise an error naming themselves as the
# constraint (issue 17: workflow versions and steps are immutable).
TRIGGER_RAISED = {"workflow_versions_immutable", "workflow_steps_immutable"}
# A step log carries its run's created_at (the partition key, issue 11).
RUN_CREATED_AT = "(SELECT created_at FROM workflow_runs WHERE id = $1)"

# constraint name -> a statement that violates exactly it ({user} etc. are bound as $n)
VIOLATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "users_email_lower_key": (
        "INSERT INTO users (email, display_name) VALUES ('U@EXAMPLE.COM', 'x')",
        (),
    ),
    "users_email_format": ("INSERT INTO users (email, display_name) VALUES ('nope', 'x')", ()),
    "users_role_valid": (
        "INSERT INTO users (email, display_name, role) VALUES ('r@x.y', 'x', 'root')",
        (),
    ),
    "users_display_name_not_blank": (
        "INSERT INTO users (email, display_name) VALUES ('b@x.y', '  ')",
        (),
    ),
    "api_keys_prefix_key": (
        "INSERT INTO api_keys (user_id, name, prefix, key_hash) VALUES ($1, 'k', 'ff_x', "
        f"'{HASH}')",
        ("user",),
    ),
    "api_keys_user_id_fkey": (
        "INSERT INTO api_keys (user_id, name, prefix, key_hash) VALUES ($1, 'k', 'ff_y', "
        f"'{HASH}')",
        ("missing",),
    ),
    "api_keys_granted_by_key_id_fkey": (
        "INSERT INTO api_keys (user_id, name, prefix, key_hash, granted_by_key_id) "
        f"VALUES ($1, 'k', 'ff_g', '{HASH}', $2)",
        ("user", "missing"),
    ),
    "api_keys_scopes_valid": (
        "INSERT INTO api_keys (user_id, name, prefix, key_hash, scopes) VALUES ($1, 'k', 'ff_z', "
        f"'{HASH}', ARRAY['root'])",
        ("user",),
    ),
    "api_keys_key_hash_format": (
        "INSERT INTO api_keys (user_id, name, prefix, key_hash) "
        "VALUES ($1, 'k', 'ff_h', 'plaintext-secret')",
        ("user",),
    ),
    "api_keys_name_not_blank": (
        f"INSERT INTO api_keys (user_id, name, prefix, key_hash) VALUES ($1, '', 'ff_n', '{HASH}')",
        ("user",),
    ),
    "workflows_owner_id_fkey": ("DELETE FROM users WHERE id = $1", ("user",)),
    "workflows_trigger_type_valid": (
        "INSERT INTO workflows (owner_id, name, trigger_type) VALUES ($1, 'w', 'cron')",
        ("user",),
    ),
    "workflows_trigger_config_object": (
        "INSERT INTO workflows (owner_id, name, trigger_config) VALUES ($1, 'w', '[1]')",
        ("user",),
    ),
    "workflows_name_not_blank": (
        "INSERT INTO workflows (owner_id, name) VALUES ($1, '')",
        ("user",),
    ),
    "workflows_concurrency_limit_id_fkey": (
        "DELETE FROM concurrency_limits WHERE id = $1",
        ("limit",),
    ),
    "workflows_max_concurrency_positive": (
        "INSERT INTO workflows (owner_id, name, max_concurrency) VALUES ($1, 'w', 0)",
        ("user",),
    ),
    "workflows_queue_not_blank": (
        "INSERT INTO workflows (owner_id, name, queue) VALUES ($1, 'w', ' ')",
        ("user",),
    ),
    "concurrency_limits_name_key": (
        "INSERT INTO concurrency_limits (name, max_running) VALUES ('shared', 1)",
        (),
    ),
    "concurrency_limits_max_running_non_negative": (
        "INSERT INTO concurrency_limits (name, max_running) VALUES ('x', -1)",
        (),
    ),
    "concurrency_limits_name_not_blank": (
        "INSERT INTO concurrency_limits (name, max_running) VALUES ('', 1)",
        (),
    ),
    "workflow_steps_workflow_id_fkey": (
        "INSERT INTO workflow_steps (workflow_id, position, name, action_type) "
        "VALUES ($1, 0, 's', 'a')",
        ("missing",),
    ),
    "workflow_steps_workflow_version_position_key": (
        "INSERT INTO workflow_steps (workflow_id, position, name, action_type) "
        "VALUES ($1, 0, 's', 'a')",
        ("workflow",),
    ),
    "workflow_steps_workflow_version_fkey": (
        "INSERT INTO workflow_steps (workflow_id, version, position, name, action_type) "
        "VALUES ($1, 7, 0, 's', 'a')",
        ("workflow",),
    ),
    "workflow_steps_immutable": (
        "UPDATE workflow_steps SET name = 'changed' WHERE workflow_id = $1",
        ("workflow",),
    ),
    "workflow_versions_workflow_id_fkey": (
        "INSERT INTO workflow_versions (workflow_id, version) VALUES ($1, 2)",
        ("missing",),
    ),
    "workflow_versions_created_by_user_id_fkey": (
        "INSERT INTO workflow_versions (workflow_id, version, created_by_user_id) "
        "VALUES ($1, 2, $2)",
        ("workflow", "missing"),
    ),
    "workflow_versions_workflow_version_key": (
        "INSERT INTO workflow_versions (workflow_id, version) VALUES ($1, 1)",
        ("workflow",),
    ),
    "workflow_versions_version_positive": (
        "INSERT INTO workflow_versions (workflow_id, version) VALUES ($1, 0)",
        ("workflow",),
    ),
    "workflow_versions_trigger_type_valid": (
        "INSERT INTO workflow_versions (workflow_id, version, trigger_type) VALUES ($1, 2, 'cron')",
        ("workflow",),
    ),
    "workflow_versions_trigger_config_object": (
        "INSERT INTO workflow_versions (workflow_id, version, trigger_config) "
        "VALUES ($1, 2, '[1]')",
        ("workflow",),
    ),
    "workflow_versions_immutable": (
        "UPDATE workflow_versions SET trigger_config = '{}' WHERE workflow_id = $1",
        ("workflow",),
    ),
    "workflow_runs_workflow_version_fkey": (
        "INSERT INTO workflow_runs (workflow_id, workflow_version) VALUES ($1, 7)",
        ("workflow",),
    ),
    "workflow_steps_position_non_negative": (
        "INSERT INTO workflow_steps (workflow_id, position, name, action_type) "
        "VALUES ($1, -1, 's', 'a')",
        ("workflow",),
    ),
    "workflow_steps_config_object": (
        "INSERT INTO workflow_steps (workflow_id, position, name, action_type, config) "
        "VALUES ($1, 5, 's', 'a', '\"x\"')",
        ("workflow",),
    ),
    "workflow_steps_retry_policy_object": (
        "INSERT INTO workflow_steps (workflow_id, position, name, action_type, retry_policy) "
        "VALUES ($1, 5, 's', 'a', 'null')",
        ("workflow",),
    ),
    "workflow_steps_retry_policy_valid": (
        "INSERT INTO workflow_steps (workflow_id, position, name, action_type, retry_policy) "
        """VALUES ($1, 5, 's', 'a', '{"max_attempts": 0}')""",
        ("workflow",),
    ),
    "workflow_steps_name_not_blank": (
        "INSERT INTO workflow_steps (workflow_id, position, name, action_type) "
        "VALUES ($1, 5, '', 'a')",
        ("workflow",),
    ),
    "workflow_steps_action_type_not_blank": (
        "INSERT INTO workflow_steps (workflow_id, position, name, action_type) "
        "VALUES ($1, 5, 's', ' ')",
        ("workflow",),
    ),
    "workflow_runs_workflow_id_fkey": ("DELETE FROM workflows WHERE id = $1", ("workflow",)),
    "workflow_runs_triggered_by_user_id_fkey": (
        "INSERT INTO workflow_runs (workflow_id, triggered_by_user_id) VALUES ($1, $2)",
        ("workflow", "missing"),
    ),
    "workflow_runs_workflow_idempotency_key": (
        "INSERT INTO workflow_runs (workflow_id, idempotency_key) VALUES ($1, 'k')",
        ("workflow",),
    ),
    "workflow_runs_status_valid": (
        "INSERT INTO workflow_runs (workflow_id, status) VALUES ($1, 'done')",
        ("workflow",),
    ),
    "workflow_runs_trigger_type_valid": (
        "INSERT INTO workflow_runs (workflow_id, trigger_type) VALUES ($1, 'cron')",
        ("workflow",),
    ),
    "workflow_runs_timestamps_match_status": (
        "INSERT INTO workflow_runs (workflow_id, status) VALUES ($1, 'running')",
        ("workflow",),
    ),
    "workflow_runs_failed_has_error": (
        "INSERT INTO workflow_runs (workflow_id, status, started_at, finished_at) "
        "VALUES ($1, 'failed', now(), now())",
        ("workflow",),
    ),
    "workflow_runs_inputs_object": (
        "INSERT INTO workflow_runs (workflow_id, inputs) VALUES ($1, '1')",
        ("workflow",),
    ),
    "workflow_runs_priority_range": (
        "INSERT INTO workflow_runs (workflow_id, priority) VALUES ($1, 101)",
        ("workflow",),
    ),
    "workflow_runs_retry_has_due_time": (
        "INSERT INTO workflow_runs (workflow_id, status, started_at) "
        "VALUES ($1, 'awaiting_retry', now())",
        ("workflow",),
    ),
    "workflow_runs_claims_non_negative": (
        "INSERT INTO workflow_runs (workflow_id, claims) VALUES ($1, -1)",
        ("workflow",),
    ),
    "workflow_runs_heartbeat_only_when_started": (
        "INSERT INTO workflow_runs (workflow_id, heartbeat_at) VALUES ($1, now())",
        ("workflow",),
    ),
    "run_step_logs_run_id_fkey": (
        "INSERT INTO run_step_logs (run_id, run_created_at, step_position, step_name) "
        "VALUES ($1, now(), 0, 's')",
        ("missing",),
    ),
    "run_step_logs_step_id_fkey": (
        "INSERT INTO run_step_logs (run_id, run_created_at, step_id, step_position, step_name) "
        f"VALUES ($1, {RUN_CREATED_AT}, $2, 1, 's')",
        ("run", "missing"),
    ),
    "run_step_logs_run_step_attempt_key": (
        "INSERT INTO run_step_logs (run_id, run_created_at, step_position, step_name) "
        f"VALUES ($1, {RUN_CREATED_AT}, 0, 's')",
        ("run",),
    ),
    "run_step_logs_attempt_positive": (
        "INSERT INTO run_step_logs (run_id, run_created_at, step_position, step_name, attempt) "
        f"VALUES ($1, {RUN_CREATED_AT}, 1, 's', 0)",
        ("run",),
    ),
    "run_step_logs_step_position_non_negative": (
        "INSERT INTO run_step_logs (run_id, run_created_at, step_position, step_name) "
        f"VALUES ($1, {RUN_CREATED_AT}, -1, 's')",
        ("run",),
    ),
    "run_step_logs_status_valid": (
        "INSERT INTO run_step_logs (run_id, run_created_at, step_position, step_name, status) "
        f"VALUES ($1, {RUN_CREATED_AT}, 1, 's', 'ok')",
        ("run",),
    ),
    "run_step_logs_timestamps_match_status": (
        "INSERT INTO run_step_logs (run_id, run_created_at, step_position, step_name, status) "
        f"VALUES ($1, {RUN_CREATED_AT}, 1, 's', 'completed')",
        ("run",),
    ),
    "run_history_run_id_fkey": (
        "INSERT INTO run_history (run_id, run_created_at, to_status, actor) "
        "VALUES ($1, now(), 'pending', 'test')",
        ("missing",),
    ),
    "run_history_to_status_valid": (
        "INSERT INTO run_history (run_id, run_created_at, to_status, actor) "
        f"VALUES ($1, {RUN_CREATED_AT}, 'done', 'test')",
        ("run",),
    ),
    "run_history_from_status_valid": (
        "INSERT INTO run_history (run_id, run_created_at, from_status, to_status, actor) "
        f"VALUES ($1, {RUN_CREATED_AT}, 'done', 'running', 'test')",
        ("run",),
    ),
    "run_history_attempt_complete": (
        "INSERT INTO run_history (run_id, run_created_at, step_position, to_status, actor) "
        f"VALUES ($1, {RUN_CREATED_AT}, 0, 'running', 'test')",
        ("run",),
    ),
    "run_history_append_only": ("UPDATE run_history SET reason = 'x' WHERE run_id = $1", ("run",)),
    "outbox_payload_object": (
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) "
        "VALUES ('a', gen_random_uuid(), 'e', '[]')",
        (),
    ),
    "outbox_event_type_not_blank": (
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type) "
        "VALUES ('a', gen_random_uuid(), '')",
        (),
    ),
    "outbox_aggregate_type_not_blank": (
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type) "
        "VALUES ('', gen_random_uuid(), 'e')",
        (),
    ),
    "outbox_attempts_non_negative": (
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, attempts) "
        "VALUES ('a', gen_random_uuid(), 'e', -1)",
        (),
    ),
    "outbox_published_or_dead_lettered": (
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, published_at, "
        "dead_lettered_at, last_error) VALUES ('a', gen_random_uuid(), 'e', now(), now(), 'x')",
        (),
    ),
    "outbox_dead_letter_has_error": (
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, dead_lettered_at) "
        "VALUES ('a', gen_random_uuid(), 'e', now())",
        (),
    ),
}


async def test_every_constraint_in_the_schema_has_a_message_and_a_violation_test() -> None:
    rows = await DB.fetch(
        """
        SELECT conname AS name FROM pg_constraint
        WHERE conrelid = ANY($1::regclass[]) AND contype IN ('c', 'u', 'f')
        UNION
        SELECT indexname FROM pg_indexes
        WHERE tablename = ANY($2::text[]) AND indexdef LIKE 'CREATE UNIQUE INDEX%'
            AND indexname NOT LIKE '%_pkey'
        """,
        [f"public.{table}" for table in support.APP_TABLES],
        support.APP_TABLES,
    )
    in_schema = {row["name"] for row in rows} | TRIGGER_RULES | TRIGGER_RAISED
    assert in_schema == set(CONSTRAINT_MESSAGES)
    assert in_schema == set(VIOLATIONS) | IMPLIED


@pytest.mark.parametrize("constraint", sorted(VIOLATIONS))
async def test_violation_becomes_conflict_error_with_its_message(constraint: str) -> None:
    ids = await fixtures()
    ids["missing"] = MISSING
    sql, params = VIOLATIONS[constraint]
    with pytest.raises(ConflictError) as caught:
        async with translated_db_errors(), DB.transaction():
            await DB.fetch(sql, *(ids[name] for name in params))
    assert caught.value.details["constraint"] == constraint
    assert caught.value.message == CONSTRAINT_MESSAGES[constraint]
    assert isinstance(caught.value.__cause__, asyncpg.IntegrityConstraintViolationError)


async def test_not_null_violation_names_the_column() -> None:
    with pytest.raises(ConflictError) as caught:
        async with translated_db_errors():
            await DB.fetch("INSERT INTO users (display_name) VALUES ('x')")
    assert caught.value.message == "email is required."


async def test_wrong_type_is_invalid_input_without_database_text() -> None:
    with pytest.raises(InvalidInputError) as caught:
        async with translated_db_errors():
            await DB.fetch("SELECT 'not-a-uuid'::uuid")
    assert "uuid" not in caught.value.message.lower()


async def test_unknown_constraint_still_maps_to_conflict() -> None:
    error = asyncpg.CheckViolationError("boom")
    translated = translate_db_error(error)
    assert isinstance(translated, ConflictError)
    assert translated.message == ConflictError.__doc__


def test_connection_errors_map_to_unavailable() -> None:
    assert isinstance(translate_db_error(ConnectionRefusedError()), DatabaseUnavailableError)
    assert isinstance(
        translate_db_error(asyncpg.exceptions.ConnectionDoesNotExistError()),
        DatabaseUnavailableError,
    )
    assert isinstance(
        translate_db_error(asyncpg.exceptions.QueryCanceledError()), DatabaseUnavailableError
    )


def test_other_errors_are_not_translated() -> None:
    assert translate_db_error(ValueError("x")) is None
    error = NotFoundError()
    assert translate_db_error(error) is error


def test_error_docstring_is_the_default_message() -> None:
    assert NotFoundError().message == "The requested object does not exist."
    assert AppError("custom", key=1).details == {"key": 1}


def test_deadlocks_and_serialization_failures_are_retryable_conflicts() -> None:
    for error in (
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        asyncpg.exceptions.SerializationError("could not serialize access"),
    ):
        translated = translate_db_error(error)
        assert isinstance(translated, ConflictError)
        assert translated.details == {"retryable": True}
        assert "deadlock" not in translated.message
