"""Domain errors, and the one place where driver errors become domain errors.

Every error's docstring is its default message. The database enforces the
invariants (named CHECK / UNIQUE / FOREIGN KEY constraints, see
``flowforge/db/tables.py``); :func:`translate_db_error` maps each constraint
name to a message a user can act on, so raw database text never reaches a client.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import asyncpg


class AppError(Exception):
    """Something went wrong in FlowForge."""

    code: ClassVar[str] = "app_error"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.details = details
        super().__init__(self.message)


class NotFoundError(AppError):
    """The requested object does not exist."""

    code = "not_found"


class ConflictError(AppError):
    """The change conflicts with the current state of the data."""

    code = "conflict"


class InvalidTransitionError(ConflictError):
    """This state change is not allowed from the current state."""

    code = "invalid_transition"


class ConcurrencyLimitError(ConflictError):
    """Starting this run now would exceed a concurrency limit (issue 18)."""

    code = "concurrency_limit"


class WorkflowInactiveError(ConflictError):
    """The workflow is deactivated: reactivate it before triggering runs."""

    code = "workflow_inactive"


class PreconditionFailedError(AppError):
    """The workflow changed since you read it: GET it again, then retry with its new ETag."""

    code = "precondition_failed"


class PreconditionRequiredError(AppError):
    """Send `If-Match: "<revision>"` with the ETag of your last GET of this workflow."""

    code = "precondition_required"


class InvalidInputError(AppError):
    """The input is not valid."""

    code = "invalid_input"


class InvalidFieldError(InvalidInputError):
    """One field of the request is not valid: a 422 in the shape of a validation error."""

    code = "validation_error"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(
            f"{field}: {message}", problems=[{"location": f"body.{field}", "message": message}]
        )


class InvalidCursorError(InvalidInputError):
    """The pagination cursor is not valid: pass back the `next_cursor` of a previous page."""

    code = "invalid_cursor"


class IdempotencyConflictError(ConflictError):
    """This Idempotency-Key was already used with a different request."""

    code = "idempotency_conflict"


class UnauthorizedError(AppError):
    """A valid API key is required: send `Authorization: Bearer <key>`."""

    code = "unauthorized"


class ForbiddenError(AppError):
    """This API key is not allowed to do this."""

    code = "forbidden"


class DatabaseUnavailableError(AppError):
    """The database is unavailable right now; try again shortly."""

    code = "database_unavailable"


# Constraint name -> message. Names are chosen in flowforge/db/tables.py and the
# raw-SQL migrations; test_errors.py proves every constraint in the schema is here.
CONSTRAINT_MESSAGES: dict[str, str] = {
    # users
    "users_email_lower_key": "A user with this email address already exists.",
    "users_email_format": "The email address is not valid.",
    "users_role_valid": "Role must be one of: admin, developer, viewer.",
    "users_display_name_not_blank": "Display name must not be blank.",
    # api_keys
    "api_keys_prefix_key": "This API key prefix is already in use.",
    "api_keys_user_id_fkey": "The API key's user does not exist.",
    "api_keys_granted_by_key_id_fkey": "The API key that grants this one does not exist.",
    "api_keys_scopes_valid": "Scopes must be a non-empty subset of: read, write, admin, worker.",
    # concurrency_limits (issue 18)
    "concurrency_limits_name_key": "A concurrency limit with this name already exists.",
    "concurrency_limits_max_running_non_negative": (
        "A concurrency limit's max_running must be zero (paused) or greater."
    ),
    "concurrency_limits_name_not_blank": "Concurrency limit name must not be blank.",
    "api_keys_key_hash_format": "The API key hash must be a SHA-256 hex digest.",
    "api_keys_name_not_blank": "API key name must not be blank.",
    # workflows
    "workflows_owner_id_fkey": (
        "The workflow's owner does not exist, or still owns workflows: "
        "deactivate the user instead of deleting them."
    ),
    "workflows_trigger_type_valid": "Trigger type must be one of: manual, schedule, webhook, event.",
    "workflows_trigger_config_object": "Trigger config must be a JSON object.",
    "workflows_name_not_blank": "Workflow name must not be blank.",
    # workflow_versions (issue 17)
    "workflow_versions_workflow_id_fkey": "The version's workflow does not exist.",
    "workflow_versions_created_by_user_id_fkey": "The user who made the version does not exist.",
    "workflow_versions_workflow_version_key": "This workflow already has a version with this number.",
    "workflow_versions_version_positive": "Version numbers start at 1.",
    "workflow_versions_trigger_type_valid": (
        "Version trigger type must be one of: manual, schedule, webhook, event."
    ),
    "workflow_versions_trigger_config_object": "Version trigger config must be a JSON object.",
    # The trigger of that name (a constraint-named exception): versions are never changed.
    "workflow_versions_immutable": (
        "A workflow version is immutable: change the workflow to create a new version."
    ),
    "workflows_concurrency_limit_id_fkey": (
        "The concurrency limit does not exist, or workflows still use it: "
        "detach them from it before deleting it."
    ),
    "workflows_max_concurrency_positive": "A workflow's max_concurrency must be 1 or more.",
    "workflows_queue_not_blank": "Queue name must not be blank.",
    # workflow_steps
    "workflow_steps_workflow_id_fkey": "The step's workflow does not exist.",
    "workflow_steps_workflow_version_fkey": "The step's workflow version does not exist.",
    "workflow_steps_workflow_version_position_key": (
        "Another step of this workflow version already has this position."
    ),
    # The trigger of that name: steps are changed by creating a new version.
    "workflow_steps_immutable": (
        "Workflow steps are immutable: replace the steps to create a new version."
    ),
    "workflow_steps_position_non_negative": "Step position must be zero or greater.",
    "workflow_steps_config_object": "Step config must be a JSON object.",
    "workflow_steps_retry_policy_object": "Step retry policy must be a JSON object.",
    "workflow_steps_retry_policy_valid": (
        "Step retry policy is not valid: at most max_attempts (an integer, 1-100), "
        "backoff (initial_seconds, max_seconds, multiplier) and jitter (0-1); see docs/runs.md."
    ),
    "workflow_steps_name_not_blank": "Step name must not be blank.",
    "workflow_steps_action_type_not_blank": "Step action type must not be blank.",
    # workflow_runs
    "workflow_runs_workflow_id_fkey": (
        "The run's workflow does not exist, or the workflow still has runs: "
        "deactivate it instead of deleting it."
    ),
    "workflow_runs_triggered_by_user_id_fkey": "The user who triggered the run does not exist.",
    "workflow_runs_workflow_version_fkey": (
        "The run's workflow version does not exist, or runs are pinned to it: "
        "a version with runs cannot be deleted."
    ),
    "workflow_runs_workflow_idempotency_key": (
        "A run with this idempotency key already exists for this workflow."
    ),
    "workflow_runs_status_valid": (
        "Run status must be one of: pending, running, completed, failed, cancelled, awaiting_retry."
    ),
    "workflow_runs_priority_range": "Run priority must be between -100 and 100.",
    "workflow_runs_retry_has_due_time": (
        "An awaiting_retry run needs its next_attempt_at; a pending or running run has none."
    ),
    "workflow_runs_claims_non_negative": "A run's claim count cannot be negative.",
    "workflow_runs_trigger_type_valid": (
        "Run trigger type must be one of: manual, schedule, webhook, event."
    ),
    "workflow_runs_timestamps_match_status": (
        "The run's started_at / finished_at do not match its status."
    ),
    "workflow_runs_failed_has_error": "A failed run must record its error.",
    "workflow_runs_inputs_object": "Run inputs must be a JSON object.",
    "workflow_runs_heartbeat_only_when_started": "Only a run that has started can record a heartbeat.",
    # Implied by the primary key (never violated alone); the target of the
    # composite step-log foreign key (time partitions, issue 11).
    "workflow_runs_id_created_at_key": "A run with this id already exists.",
    # run_step_logs
    # Composite since time partitioning: (run_id, run_created_at) must be a run's
    # (id, created_at), so a missing run and a wrong run_created_at both land here.
    "run_step_logs_run_id_fkey": "The step log's run does not exist.",
    "run_step_logs_step_id_fkey": "The step log's step does not exist.",
    "run_step_logs_run_step_attempt_key": "This attempt of this step is already logged for the run.",
    "run_step_logs_attempt_positive": "Attempt numbers start at 1.",
    "run_step_logs_step_position_non_negative": "Step position must be zero or greater.",
    "run_step_logs_status_valid": (
        "Step log status must be one of: pending, running, completed, failed, cancelled."
    ),
    "run_step_logs_timestamps_match_status": (
        "The step log's started_at / finished_at do not match its status."
    ),
    # run_history (written by triggers only; docs/decisions/14-run-history.md)
    "run_history_run_id_fkey": "The history entry's run does not exist.",
    "run_history_to_status_valid": (
        "History status must be one of: pending, running, completed, failed, cancelled."
    ),
    "run_history_from_status_valid": (
        "History status must be one of: pending, running, completed, failed, cancelled."
    ),
    "run_history_attempt_complete": (
        "A history entry of a step attempt names its attempt, step position and number."
    ),
    # Not a table constraint: raised by the run_history_append_only trigger.
    "run_history_append_only": (
        "Run history is append-only: entries are never changed, and leave only with their run."
    ),
    # outbox
    "outbox_payload_object": "Event payload must be a JSON object.",
    "outbox_event_type_not_blank": "Event type must not be blank.",
    "outbox_aggregate_type_not_blank": "Aggregate type must not be blank.",
    "outbox_attempts_non_negative": "Publish attempts must be zero or greater.",
    "outbox_published_or_dead_lettered": "An event cannot be both published and dead-lettered.",
    "outbox_dead_letter_has_error": "A dead-lettered event must record its last error.",
}

# Connection-class failures: the server went away, the network broke, or the
# connection was lost mid-statement. All of them mean "try again later".
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    OSError,  # includes TimeoutError (connect timeout)
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


# A time partition's name (flowforge/jobs/partitions.py): <table>_pYYYYMM[DD] or
# <table>_default. Here because the engine imports this module: flowforge.jobs.partitions
# takes it from here. PostgreSQL reports a unique violation under the partition's own
# index, which flowforge.jobs.partitions names <partition>_<suffix> after the table's
# <table>_<suffix>.
PARTITION_NAME = re.compile(r"^(?P<table>[a-z_]+?)_(?:p\d{6}|p\d{8}|default|legacy)$")


def parent_constraint(name: str | None, table: str | None) -> str | None:
    """The partitioned table's constraint name for one reported on a partition."""
    if name is None or name in CONSTRAINT_MESSAGES or table is None:
        return name
    match = PARTITION_NAME.match(table)
    if match is None or not name.startswith(f"{table}_"):
        return name
    return f"{match['table']}_{name.removeprefix(f'{table}_')}"


def translate_db_error(error: BaseException) -> AppError | None:
    """Map a driver exception to a domain error, or None if it is not ours to map."""
    if isinstance(error, AppError):
        return error
    if isinstance(error, asyncpg.exceptions.IntegrityConstraintViolationError):
        name = getattr(error, "constraint_name", None)
        if isinstance(error, asyncpg.exceptions.NotNullViolationError):
            column = getattr(error, "column_name", None) or "a required field"
            return ConflictError(f"{column} is required.", column=column)
        name = parent_constraint(name, getattr(error, "table_name", None))
        if name in CONSTRAINT_MESSAGES:
            return ConflictError(CONSTRAINT_MESSAGES[name], constraint=name)
        return ConflictError(constraint=name)
    if isinstance(
        error,
        asyncpg.exceptions.DeadlockDetectedError | asyncpg.exceptions.SerializationError,
    ):
        # Two transactions collided; the database rolled this one back. Safe to retry.
        return ConflictError(
            "The change collided with a concurrent one and was not applied; retry it.",
            retryable=True,
        )
    if isinstance(error, asyncpg.exceptions.DataError):
        # Bad value for a column type (invalid UUID text, out-of-range number, ...).
        return InvalidInputError("A value has the wrong type or is out of range.")
    if isinstance(error, asyncpg.exceptions.QueryCanceledError):
        return DatabaseUnavailableError("The database took too long to answer; try again.")
    if isinstance(error, CONNECTION_ERRORS):
        return DatabaseUnavailableError()
    return None


@contextlib.asynccontextmanager
async def translated_db_errors(
    keep: tuple[type[Exception], ...] = (),
) -> AsyncIterator[None]:
    """Re-raise driver errors inside the block as domain errors (the one boundary).

    Errors of the `keep` classes pass through untranslated (for a caller that
    handles them, e.g. a replica read retried on the primary).
    """
    try:
        yield
    except keep:
        raise
    except Exception as error:
        domain_error = translate_db_error(error)
        if domain_error is None or domain_error is error:
            raise
        raise domain_error from error
