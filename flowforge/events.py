"""Domain event types: the contract between writers of the outbox and its consumers.

Every event row has ``aggregate_type``, ``aggregate_id``, ``event_type`` and a
JSON-object ``payload`` that a consumer can act on without reading the
database. The event's own ``id`` (outbox.id) is the de-duplication key.

Aggregates and their events:

* ``user``          user.created, user.updated, user.deactivated, user.activated
* ``api_key``       api_key.created, api_key.revoked
* ``workflow``      workflow.created, workflow.updated, workflow.steps_replaced,
                    workflow.deactivated, workflow.activated, workflow.deleted
* ``workflow_run``  run.created, run.started, run.completed, run.failed, run.cancelled,
                    run.step_logged

Run events carry :func:`run_payload`: the run's id, workflow, new status, the
status it left (``previous_status``, None for run.created), its error (failed;
the reason for cancelled), and the timestamps a consumer needs (ISO 8601, UTC).
``flowforge/runs.py`` builds them in SQL with the same keys, plus: run.created
``trigger_type``, ``triggered_by_user_id``, ``inputs``, ``idempotency_key`` (what
an executor needs to run it); the other run events ``outputs``. run.step_logged
carries the attempt (``step_log_id``, ``step_id``, ``step_position``,
``step_name``, ``attempt``, ``status``, ``error``, timestamps) and ``workflow_id``.
Updates (``*.updated``, ``*.activated``, ``*.deactivated``) carry ``changes``:
the fields that changed, with their new values. No payload ever holds a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

USER = "user"
API_KEY = "api_key"
WORKFLOW = "workflow"
WORKFLOW_RUN = "workflow_run"

RUN_EVENT_BY_STATUS = {
    "pending": "run.created",
    "running": "run.started",
    "completed": "run.completed",
    "failed": "run.failed",
    "cancelled": "run.cancelled",
}


def run_payload(run: Mapping[str, Any], previous_status: str | None) -> dict[str, Any]:
    """The payload of a run lifecycle event, from the run's row after the change."""
    return {
        "run_id": run["id"],
        "workflow_id": run["workflow_id"],
        "status": run["status"],
        "previous_status": previous_status,
        "error": run.get("error"),
        "started_at": run.get("started_at"),
        "finished_at": run.get("finished_at"),
    }
