"""Piccolo Admin's "Why is a run waiting" form (issue 18): a run's waiting_reason.

Through the admin API its UI calls (a real session login, the CSRF token):
the form answers with the reason ``GET /api/v1/runs/{id}`` gives (both call
``flowforge.domain.queue.waiting_reason``), and bad input is a 422 with a
message the UI shows, never a 500.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import httpx
import pytest

from flowforge.db.engine import DB
from tests.api.conftest import Caller, create_workflow, trigger

FORM = "/admin/api/forms/why-is-a-run-waiting/"


async def ask(session: httpx.AsyncClient, body: Any) -> httpx.Response:
    return await session.post(
        FORM, json=body, headers={"X-CSRFToken": session.cookies.get("csrftoken") or ""}
    )


async def api_reason(client: httpx.AsyncClient, caller: Caller, run_id: str) -> Any:
    response = await client.get(f"/api/v1/runs/{run_id}", headers=caller.headers)
    assert response.status_code == 200, response.text
    return response.json()["waiting_reason"]


async def test_the_form_is_listed_with_its_one_field(admin_session: httpx.AsyncClient) -> None:
    listed = await admin_session.get("/admin/api/forms/")
    assert listed.status_code == 200, listed.text
    assert {"name": "Why is a run waiting", "slug": "why-is-a-run-waiting"}.items() <= (
        listed.json()[0].items()
    )
    schema = await admin_session.get(f"{FORM}schema/")
    assert list(schema.json()["properties"]) == ["run_id"]


async def test_the_form_gives_the_reason_the_api_gives(
    admin_session: httpx.AsyncClient, developer: Caller
) -> None:
    client = admin_session
    workflow = await create_workflow(client, developer)
    await DB.fetch("UPDATE workflows SET max_concurrency = 1 WHERE id = $1", workflow["id"])
    running = await trigger(client, developer, workflow["id"])
    await DB.fetch(
        "UPDATE workflow_runs SET status = 'running', started_at = now() WHERE id = $1",
        running["id"],
    )
    held = await trigger(client, developer, workflow["id"])
    delayed = (
        await DB.fetch(
            "INSERT INTO workflow_runs (workflow_id, not_before) "
            "VALUES ($1, now() + interval '1 hour') RETURNING id",
            workflow["id"],
        )
    )[0]["id"]
    cases = [
        (held["id"], "workflow_concurrency", "max_concurrency is full"),
        (str(delayed), "not_before", "delayed"),
    ]
    for run_id, reason, words in cases:
        assert await api_reason(client, developer, run_id) == reason
        response = await ask(admin_session, {"run_id": run_id})
        assert response.status_code == 200, response.text
        message = response.json()["custom_form_success"]
        assert f"({reason})" in message and words in message and run_id in message
    # The slot frees: the held run is due with a free slot, "queued", in both.
    await DB.fetch(
        "UPDATE workflow_runs SET status = 'completed', finished_at = now() WHERE id = $1",
        running["id"],
    )
    assert await api_reason(client, developer, held["id"]) == "queued"
    response = await ask(admin_session, {"run_id": f"  {held['id'].upper()} "})
    assert "(queued)" in response.json()["custom_form_success"]
    # A run that is not queued is not waiting.
    response = await ask(admin_session, {"run_id": running["id"]})
    assert response.status_code == 200, response.text
    assert response.json()["custom_form_success"] == (
        f"Run {running['id']} is completed, not queued: it is not waiting."
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"run_id": "not-a-uuid"}, "'not-a-uuid' is not a run id"),
        ({"run_id": ""}, "'' is not a run id"),
        ({"run_id": "1; DROP TABLE workflow_runs"}, "is not a run id"),
        ({"run_id": str(uuid.UUID(int=7))}, f"No run has the id {uuid.UUID(int=7)}."),
    ],
)
async def test_bad_input_is_a_422_with_a_message_never_a_500(
    admin_session: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    body: dict[str, Any],
    expected: str,
) -> None:
    caplog.set_level(logging.INFO)
    response = await ask(admin_session, body)
    assert response.status_code == 422, response.text
    assert expected in response.json()["custom_form_error"]
    assert not [r for r in caplog.records if r.levelno > logging.INFO or r.exc_info]


@pytest.mark.parametrize(
    "body",
    [{}, {"run_id": 7}, {"run_id": None}, {"run_id": "x" * 101}],
)
async def test_a_malformed_form_is_refused_by_its_model(
    admin_session: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    response = await ask(admin_session, body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["run_id"]


@pytest.mark.parametrize("content", [b"not json", b"[1]", b'"run"', b"", b"\xff"])
async def test_a_body_that_is_not_a_json_object_is_a_400(
    admin_session: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    caplog.set_level(logging.INFO)
    response = await admin_session.post(
        FORM,
        content=content,
        headers={
            "X-CSRFToken": admin_session.cookies.get("csrftoken") or "",
            "Content-Type": "application/json",
        },
    )
    assert response.status_code == 400, response.text
    assert "JSON object" in response.json()["error"]["message"]
    assert not [r for r in caplog.records if r.levelno > logging.INFO or r.exc_info]
