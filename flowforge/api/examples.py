"""Realistic examples for every schema of the OpenAPI description.

One example per component schema, built from a few shared objects so they
agree with each other (the run's workflow is the workflow shown, and so on).
tests/api/test_openapi.py validates each one against its Pydantic model, so an
example cannot drift from what the server really accepts and returns.
"""

from __future__ import annotations

from typing import Any

USER_ID = "4e2d8a90-1c7b-4f3e-8d6a-9b0c1e2f3a4b"
KEY_ID = "7a1c3e5f-2b4d-4a6c-8e0f-1a2b3c4d5e6f"
WORKFLOW_ID = "c3f1e2d4-5b6a-4c7d-9e8f-0a1b2c3d4e5f"
RUN_ID = "e8d7c6b5-a493-4827-9160-5f4e3d2c1b0a"
STEP_LOG_ID = "5d4c3b2a-1908-4776-a655-443322110099"
STEP_IDS = [
    "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
    "b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e",
    "c3d4e5f6-a7b8-4c9d-8e1f-2a3b4c5d6e7f",
]
CREATED = "2026-11-30T09:30:00.000000Z"
UPDATED = "2026-11-30T09:31:12.345678Z"
CURSOR = "1796031000000000_e8d7c6b5a493482791605f4e3d2c1b0a"

USER = {
    "id": USER_ID,
    "email": "grace@example.com",
    "display_name": "Grace Hopper",
    "role": "developer",
    "is_active": True,
    "created_at": CREATED,
    "updated_at": CREATED,
}
API_KEY = {
    "id": KEY_ID,
    "user_id": USER_ID,
    "name": "ci-deploy",
    "prefix": "3f9a1c2b7d4e6f80",
    "scopes": ["read", "write"],
    "expires_at": "2036-12-31T00:00:00Z",
    "revoked_at": None,
    "last_used_at": UPDATED,
    "granted_by_key_id": None,
    "created_at": CREATED,
}
STEPS_IN = [
    {
        "name": "Query sales",
        "action_type": "sql.query",
        "config": {"sql": "select region, sum(total) from orders group by region"},
    },
    {
        "name": "Render report",
        "action_type": "template.render",
        "config": {"template": "nightly.html"},
    },
    {
        "name": "Email team",
        "action_type": "email.send",
        "config": {"to": ["team@example.com"]},
        "retry_policy": {"max_attempts": 3, "backoff": {"initial_seconds": 30}},
    },
]
STEPS_OUT = [
    {
        "id": STEP_IDS[position],
        "version": 2,
        "position": position,
        "config": {},
        "retry_policy": {},
        **step,
    }
    for position, step in enumerate(STEPS_IN)
]
WORKFLOW_SUMMARY = {
    "id": WORKFLOW_ID,
    "owner_id": USER_ID,
    "name": "Nightly sales report",
    "description": "Totals by region, rendered and emailed at 02:00.",
    "trigger_type": "schedule",
    "trigger_config": {"cron": "0 2 * * *"},
    "is_active": True,
    "version": 2,
    "revision": 3,
    "queue": "reports",
    "max_concurrency": 2,
    "concurrency_limit": "smtp-relay",
    "created_at": CREATED,
    "updated_at": CREATED,
    "step_count": 3,
}
CONCURRENCY_LIMIT = {
    "id": "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a",
    "name": "smtp-relay",
    "max_running": 5,
    "workflow_count": 3,
    "created_at": CREATED,
    "updated_at": UPDATED,
}
VERSION = {
    "id": "0b9e8d7c-6a5f-4e3d-8c2b-1a0f9e8d7c6b",
    "workflow_id": WORKFLOW_ID,
    "version": 2,
    "trigger_type": "schedule",
    "trigger_config": {"cron": "0 2 * * *"},
    "created_by_user_id": USER_ID,
    "created_at": CREATED,
}
RUN = {
    "id": RUN_ID,
    "workflow_id": WORKFLOW_ID,
    "workflow_version": 2,
    "status": "running",
    "trigger_type": "manual",
    "triggered_by_user_id": USER_ID,
    "inputs": {"date": "2026-11-29", "regions": ["emea", "amer"]},
    "outputs": None,
    "error": None,
    "idempotency_key": "nightly-2026-11-29",
    "started_at": "2026-11-30T09:30:01.250000Z",
    "finished_at": None,
    "created_at": CREATED,
    "updated_at": UPDATED,
    "priority": 0,
    "not_before": None,
    "next_attempt_at": None,
    "claimed_by": "worker-7",
    "claims": 1,
}
STEP_LOG = {
    "id": STEP_LOG_ID,
    "run_id": RUN_ID,
    "step_id": STEP_IDS[0],
    "step_position": 0,
    "step_name": "Query sales",
    "attempt": 1,
    "status": "completed",
    "input": {"date": "2026-11-29"},
    "output": {"rows": 4},
    "error": None,
    "started_at": "2026-11-30T09:30:01.500000Z",
    "finished_at": "2026-11-30T09:30:03.750000Z",
    "created_at": "2026-11-30T09:30:01.500000Z",
    "updated_at": "2026-11-30T09:30:03.750000Z",
}
HISTORY_ENTRY = {
    "id": "01938f2a-7c4e-7d10-9a3b-2c4d6e8f0a1b",
    "run_id": RUN_ID,
    "step_log_id": STEP_LOG_ID,
    "step_position": 0,
    "attempt": 1,
    "from_status": "running",
    "to_status": "completed",
    "reason": None,
    "actor": f"api_key:{KEY_ID}",
    "recorded_at": UPDATED,
}

SCHEMA_EXAMPLES: dict[str, Any] = {
    # users
    "UserOut": USER,
    "UserCreate": {
        "email": "grace@example.com",
        "display_name": "Grace Hopper",
        "role": "developer",
    },
    "UserUpdate": {"display_name": "Grace B. Hopper", "role": "admin"},
    "MeOut": {
        "user": USER,
        "api_key_id": KEY_ID,
        "scopes": ["read", "write"],
        "effective_scopes": ["read", "write"],
    },
    "Page_UserOut_": {"items": [USER], "next_cursor": None},
    "Role": "developer",
    # api keys
    "ApiKeyOut": API_KEY,
    "ApiKeyCreated": {
        **API_KEY,
        "last_used_at": None,
        "key": "ff_3f9a1c2b7d4e6f80_Xq3v9LmN2pR7sT1uW5yZ8aB4cD6eF0gH2iJ4kL6mN8o",
    },
    "ApiKeyCreate": {
        "name": "ci-deploy",
        "scopes": ["read", "write"],
        "expires_at": "2036-12-31T00:00:00Z",
    },
    "Page_ApiKeyOut_": {"items": [API_KEY], "next_cursor": None},
    "Scope": "read",
    # workflows
    "StepIn": STEPS_IN[2],
    "StepOut": STEPS_OUT[2],
    "StepList": {"steps": STEPS_IN},
    "WorkflowCreate": {
        "name": "Nightly sales report",
        "description": "Totals by region, rendered and emailed at 02:00.",
        "trigger_type": "schedule",
        "trigger_config": {"cron": "0 2 * * *"},
        "queue": "reports",
        "concurrency_limit": "smtp-relay",
        "steps": STEPS_IN,
    },
    "WorkflowUpdate": {"description": "Totals by region, emailed at 03:00.", "max_concurrency": 2},
    "WorkflowSummary": WORKFLOW_SUMMARY,
    "WorkflowOut": {**WORKFLOW_SUMMARY, "steps": STEPS_OUT},
    "Page_WorkflowSummary_": {"items": [WORKFLOW_SUMMARY], "next_cursor": CURSOR},
    "VersionSummary": VERSION,
    "VersionOut": {**VERSION, "steps": STEPS_OUT},
    "Page_VersionSummary_": {"items": [VERSION], "next_cursor": None},
    "TriggerType": "schedule",
    # concurrency limits
    "ConcurrencyLimitOut": CONCURRENCY_LIMIT,
    "ConcurrencyLimitCreate": {"name": "smtp-relay", "max_running": 5},
    "ConcurrencyLimitUpdate": {"max_running": 0},
    "Page_ConcurrencyLimitOut_": {"items": [CONCURRENCY_LIMIT], "next_cursor": None},
    # runs
    "RunTrigger": {"inputs": {"date": "2026-11-29", "regions": ["emea", "amer"]}, "version": 2},
    "RunOut": RUN,
    "RunTriggered": {
        **RUN,
        "status": "pending",
        "started_at": None,
        "updated_at": CREATED,
        "claimed_by": None,
        "claims": 0,
        "replayed": False,
    },
    "RunDetail": {**RUN, "step_logs": [STEP_LOG], "waiting_reason": None},
    "RunClaim": {"worker_id": "worker-7", "limit": 10, "queue": "reports"},
    "ClaimedRuns": {"runs": [RUN]},
    "RetryPolicy": {
        "max_attempts": 3,
        "backoff": {"initial_seconds": 30, "max_seconds": 600, "multiplier": 2},
        "jitter": 0.1,
    },
    "Backoff": {"initial_seconds": 30, "max_seconds": 600, "multiplier": 2},
    "Page_RunOut_": {"items": [RUN], "next_cursor": CURSOR},
    "RunHistoryOut": HISTORY_ENTRY,
    "Page_RunHistoryOut_": {"items": [HISTORY_ENTRY], "next_cursor": CURSOR},
    "RunComplete": {"outputs": {"report_url": "https://reports.example.com/nightly/2026-11-29"}},
    "RunFail": {"error": "Email team: SMTP server timed out after 3 attempts"},
    "RunCancel": {"reason": "Superseded by a manual re-run"},
    "RunStatus": "running",
    "StepLogAppend": {
        "step_position": 0,
        "status": "running",
        "input": {"date": "2026-11-29"},
        "started_at": "2026-11-30T09:30:01.5Z",
    },
    "StepLogFinish": {"status": "completed", "output": {"rows": 4}},
    "StepLogOut": STEP_LOG,
    # errors and health
    "ErrorDetail": {
        "code": "invalid_transition",
        "message": "Cannot complete a run that is pending.",
        "details": {"current_status": "pending", "requested_status": "completed"},
    },
    "ErrorResponse": {
        "error": {
            "code": "not_found",
            "message": "Workflow not found.",
            "details": {"workflow_id": WORKFLOW_ID},
        }
    },
    "Liveness": {"status": "ok"},
    "OutboxHealth": {"lag_seconds": 0.42, "dead_lettered": 0},
    "Ready": {
        "postgres": "ok",
        "outbox": {"lag_seconds": 0.42, "dead_lettered": 0},
    },
    "NotReady": {"postgres": "error: migrations are not at head"},
}
