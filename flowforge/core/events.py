"""Domain event types: the contract between writers of the outbox and its consumers.

The one source of truth for event names and payload keys. Every event row has
``aggregate_type``, ``aggregate_id``, ``event_type`` and a JSON-object
``payload`` that a consumer can act on without reading the database; the
event's own ``id`` (outbox.id) is the de-duplication key. :data:`CONTRACT`
names every event type with its aggregate and exact payload keys;
:mod:`flowforge.outbox.writer` refuses a payload built in Python that does not match
it, run payloads are built here for Python (:func:`run_payload`) and in
:mod:`flowforge.db.sql.outbox` for SQL (``run_payload_sql``,
``step_logged_payload_sql``) from the same key lists, and
tests/test_event_contract.py compares every event type's payload, however it
was built, with the contract.

Pure data and checks, importing nothing of ours: it sits in ``core/`` so that
every layer that writes or reads events can use it, the SQL home
(``flowforge/db/sql/``, below the outbox) included.

* ``user``          user.created, user.updated, user.deactivated, user.activated
* ``api_key``       api_key.created (with the key that granted it, if any),
                    api_key.revoked (one per key, a revocation's cascade included)
* ``workflow``      workflow.created, workflow.updated, workflow.steps_replaced,
                    workflow.version_created, workflow.deactivated, workflow.activated,
                    workflow.deleted
* ``workflow_run``  run.created, run.started, run.completed, run.failed, run.cancelled,
                    run.retry_scheduled (awaiting_retry, with next_attempt_at), run.step_logged

Run lifecycle events carry the run's id, workflow, new status, the status it
left (``previous_status``, None for run.created), its error (failed; the
reason for cancelled), and the timestamps a consumer needs (ISO 8601, UTC);
run.created adds what an executor needs to run it (``trigger_type``,
``triggered_by_user_id``, ``inputs``, ``idempotency_key``, and the
``workflow_version`` whose steps it runs), the others the
run's ``outputs``. Updates (``*.updated``, ``*.activated``, ``*.deactivated``)
carry ``changes``: the fields that changed, with their new values. No payload
ever holds a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, LiteralString

USER: Final = "user"
API_KEY: Final = "api_key"
WORKFLOW: Final = "workflow"
WORKFLOW_RUN: Final = "workflow_run"


@dataclass(frozen=True)
class EventType:
    name: str
    aggregate_type: str
    keys: tuple[LiteralString, ...]  # exactly these payload keys, in this order


RUN_KEYS: Final = (
    "run_id",
    "workflow_id",
    "status",
    "previous_status",
    "error",
    "started_at",
    "finished_at",
)
RUN_CREATED_KEYS: Final = (
    *RUN_KEYS,
    "trigger_type",
    "triggered_by_user_id",
    "inputs",
    "idempotency_key",
    "workflow_version",
)
RUN_CHANGED_KEYS: Final = (*RUN_KEYS, "outputs")
# run.retry_scheduled: when the claim may pick the run up again (issue 18).
RUN_RETRY_KEYS: Final = (*RUN_CHANGED_KEYS, "next_attempt_at")
STEP_LOGGED_KEYS: Final = (
    "run_id",
    "workflow_id",
    "step_log_id",
    "step_id",
    "step_position",
    "step_name",
    "attempt",
    "status",
    "error",
    "started_at",
    "finished_at",
)
USER_KEYS: Final = ("user_id", "email", "role")
# cascaded_from: null for the key a revocation named, else that key's id (this
# key was granted by it, directly or not, and revoked with it).
API_KEY_REVOKED_KEYS: Final = ("api_key_id", "user_id", "prefix", "cascaded_from")
WORKFLOW_CHANGED_KEYS: Final = ("workflow_id", "owner_id", "changes")


def _types(aggregate_type: str, keys: tuple[LiteralString, ...], *names: str) -> list[EventType]:
    return [EventType(name, aggregate_type, keys) for name in names]


CONTRACT: Final[dict[str, EventType]] = {
    event.name: event
    for event in [
        *_types(USER, USER_KEYS, "user.created"),
        *_types(
            USER,
            (*USER_KEYS, "changes"),
            "user.updated",
            "user.deactivated",
            "user.activated",
        ),
        *_types(
            API_KEY,
            (
                "api_key_id",
                "user_id",
                "name",
                "prefix",
                "scopes",
                "expires_at",
                "granted_by_key_id",
            ),
            "api_key.created",
        ),
        *_types(API_KEY, API_KEY_REVOKED_KEYS, "api_key.revoked"),
        *_types(
            WORKFLOW,
            ("workflow_id", "owner_id", "name", "trigger_type", "step_count"),
            "workflow.created",
        ),
        *_types(
            WORKFLOW,
            WORKFLOW_CHANGED_KEYS,
            "workflow.updated",
            "workflow.deactivated",
            "workflow.activated",
        ),
        *_types(
            WORKFLOW,
            ("workflow_id", "owner_id", "step_count", "steps"),
            "workflow.steps_replaced",
        ),
        *_types(WORKFLOW, ("workflow_id", "owner_id", "name"), "workflow.deleted"),
        *_types(
            WORKFLOW,
            (
                "workflow_id",
                "owner_id",
                "version",
                "trigger_type",
                "step_count",
                "created_by_user_id",
            ),
            "workflow.version_created",
        ),
        *_types(WORKFLOW_RUN, RUN_CREATED_KEYS, "run.created"),
        *_types(
            WORKFLOW_RUN,
            RUN_CHANGED_KEYS,
            "run.started",
            "run.completed",
            "run.failed",
            "run.cancelled",
        ),
        *_types(WORKFLOW_RUN, RUN_RETRY_KEYS, "run.retry_scheduled"),
        *_types(WORKFLOW_RUN, STEP_LOGGED_KEYS, "run.step_logged"),
    ]
}

# A run's status -> the event that announces it.
RUN_EVENT_BY_STATUS: Final = {
    "pending": "run.created",
    "running": "run.started",
    "completed": "run.completed",
    "failed": "run.failed",
    "cancelled": "run.cancelled",
    "awaiting_retry": "run.retry_scheduled",
}


def check_payload(aggregate_type: str, event_type: str, payload: Mapping[str, Any]) -> None:
    """ValueError unless `payload` has exactly the contract's keys for `event_type`."""
    event = CONTRACT.get(event_type)
    if event is None:
        raise ValueError(f"unknown event type {event_type!r}")
    if aggregate_type != event.aggregate_type:
        raise ValueError(f"{event_type} belongs to {event.aggregate_type}, not {aggregate_type}")
    if set(payload) != set(event.keys):
        raise ValueError(
            f"{event_type} payload keys {sorted(payload)} differ from the contract's "
            f"{sorted(event.keys)}"
        )


def run_payload(run: Mapping[str, Any], previous_status: str | None) -> dict[str, Any]:
    """The payload of a run lifecycle event, from the run's row after the change.

    The event is the one for the run's new status (:data:`RUN_EVENT_BY_STATUS`).
    """
    payload = {
        "run_id": run["id"],
        "workflow_id": run["workflow_id"],
        "status": run["status"],
        "previous_status": previous_status,
        "error": run.get("error"),
        "started_at": run.get("started_at"),
        "finished_at": run.get("finished_at"),
    }
    extra = CONTRACT[RUN_EVENT_BY_STATUS[run["status"]]].keys[len(RUN_KEYS) :]
    payload.update({key: run.get(key) for key in extra})
    return payload
