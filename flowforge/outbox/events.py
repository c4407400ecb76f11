"""Domain event types: the contract between writers of the outbox and its consumers.

The one source of truth for event names and payload keys. Every event row has
``aggregate_type``, ``aggregate_id``, ``event_type`` and a JSON-object
``payload`` that a consumer can act on without reading the database; the
event's own ``id`` (outbox.id) is the de-duplication key. :data:`CONTRACT`
names every event type with its aggregate and exact payload keys;
:mod:`flowforge.outbox.writer` refuses a payload built in Python that does not match
it, run payloads are built here for Python (:func:`run_payload`) and for SQL
(:func:`run_payload_sql`, :func:`step_logged_payload_sql`) from the same key
lists, and tests/test_event_contract.py compares every event type's payload,
however it was built, with the contract.

* ``user``          user.created, user.updated, user.deactivated, user.activated
* ``api_key``       api_key.created (with the key that granted it, if any),
                    api_key.revoked (one per key, a revocation's cascade included)
* ``workflow``      workflow.created, workflow.updated, workflow.steps_replaced,
                    workflow.deactivated, workflow.activated, workflow.deleted
* ``workflow_run``  run.created, run.started, run.completed, run.failed, run.cancelled,
                    run.step_logged

Run lifecycle events carry the run's id, workflow, new status, the status it
left (``previous_status``, None for run.created), its error (failed; the
reason for cancelled), and the timestamps a consumer needs (ISO 8601, UTC);
run.created adds what an executor needs to run it (``trigger_type``,
``triggered_by_user_id``, ``inputs``, ``idempotency_key``), the others the
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
)
RUN_CHANGED_KEYS: Final = (*RUN_KEYS, "outputs")
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
        *_types(WORKFLOW_RUN, RUN_CREATED_KEYS, "run.created"),
        *_types(
            WORKFLOW_RUN,
            RUN_CHANGED_KEYS,
            "run.started",
            "run.completed",
            "run.failed",
            "run.cancelled",
        ),
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
    if RUN_EVENT_BY_STATUS[run["status"]] == "run.created":
        extra = RUN_CREATED_KEYS[len(RUN_KEYS) :]
    else:
        extra = RUN_CHANGED_KEYS[len(RUN_KEYS) :]
    payload.update({key: run.get(key) for key in extra})
    return payload


# -- the same payloads, built in SQL (one round trip with the change) -------------------


def iso(expression: LiteralString) -> LiteralString:
    """SQL for a timestamptz as the ISO 8601 text Python's ``isoformat()`` gives (UTC).

    Keeps SQL-built payloads identical in form to Python-built ones whatever
    the session's TimeZone is.
    """
    return f"to_char({expression} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"


def _jsonb_object(
    values: dict[str, LiteralString], keys: tuple[LiteralString, ...]
) -> LiteralString:
    if set(values) != set(keys):
        raise ValueError(f"SQL payload keys {sorted(values)} differ from {sorted(keys)}")
    pairs: list[LiteralString] = [f"'{key}', {values[key]}" for key in keys]
    return f"jsonb_build_object({', '.join(pairs)})"


def run_payload_sql(
    alias: LiteralString, previous_status: LiteralString, event_type: str
) -> LiteralString:
    """``jsonb_build_object(...)`` of `event_type`'s payload from the run row `alias`."""
    values: dict[str, LiteralString] = {
        "run_id": f"{alias}.id",
        "workflow_id": f"{alias}.workflow_id",
        "status": f"{alias}.status",
        "previous_status": previous_status,
        "error": f"{alias}.error",
        "started_at": iso(f"{alias}.started_at"),
        "finished_at": iso(f"{alias}.finished_at"),
        "trigger_type": f"{alias}.trigger_type",
        "triggered_by_user_id": f"{alias}.triggered_by_user_id",
        "inputs": f"{alias}.inputs",
        "idempotency_key": f"{alias}.idempotency_key",
        "outputs": f"{alias}.outputs",
    }
    keys = CONTRACT[event_type].keys
    return _jsonb_object({key: values[key] for key in keys}, keys)


def step_logged_payload_sql(alias: LiteralString, workflow_id: LiteralString) -> LiteralString:
    """``jsonb_build_object(...)`` of run.step_logged from the step-log row `alias`."""
    values: dict[str, LiteralString] = {
        "run_id": f"{alias}.run_id",
        "workflow_id": workflow_id,
        "step_log_id": f"{alias}.id",
        "step_id": f"{alias}.step_id",
        "step_position": f"{alias}.step_position",
        "step_name": f"{alias}.step_name",
        "attempt": f"{alias}.attempt",
        "status": f"{alias}.status",
        "error": f"{alias}.error",
        "started_at": iso(f"{alias}.started_at"),
        "finished_at": iso(f"{alias}.finished_at"),
    }
    return _jsonb_object(values, STEP_LOGGED_KEYS)


def api_key_revoked_payload_sql(alias: LiteralString, named: LiteralString) -> LiteralString:
    """``jsonb_build_object(...)`` of api_key.revoked from the key row `alias`;
    `named` is the key the revocation named (SQL)."""
    values: dict[str, LiteralString] = {
        "api_key_id": f"{alias}.id",
        "user_id": f"{alias}.user_id",
        "prefix": f"{alias}.prefix",
        "cascaded_from": f"CASE WHEN {alias}.id = {named} THEN NULL ELSE {named} END",
    }
    return _jsonb_object(values, API_KEY_REVOKED_KEYS)
