"""JSON numbers keep every digit: request → JSONB → response, events and the relay.

Bodies are sent and read as raw text: Python's json (floats) would round the
very numbers these tests are about. Responses are decoded with every number as
its text, so a test sees exactly the digits the server wrote.
"""

from __future__ import annotations

import io
import json
import sys
from typing import Any

import httpx
import pytest

from flowforge.api.schemas import MAX_JSON_BYTES
from flowforge.db.engine import DB
from tests.api.conftest import Caller, count, create_workflow

THOUSAND_DIGITS = "9" * 1000
# Python's int() reads at most this many digits (json.loads fails past it).
INT_MAX_DIGITS = sys.get_int_max_str_digits()
# PostgreSQL's numeric holds at most this many digits after the decimal point.
NUMERIC_MAX_SCALE = 16_383
# Each number as sent, and as JSONB stores and returns it (numeric: exponents
# written out in full, the scale kept, no negative zero).
NUMBERS: dict[str, tuple[str, str]] = {
    "past_float": ("12345678901234567890.5", "12345678901234567890.5"),
    "past_double_range": ("1e400", "1" + "0" * 400),
    "negative_zero": ("-0.0", "0.0"),
    "one_point_zero": ("1.0", "1.0"),
    "one": ("1", "1"),
    "tenth": ("0.1", "0.1"),
    "trailing_zero": ("2.50", "2.50"),
    "small": ("1E-7", "0.0000001"),
    "thousand_digit_integer": (THOUSAND_DIGITS, THOUSAND_DIGITS),
    "thousand_digit_decimal": (
        "-" + "1" * 500 + "." + "2" * 500,
        "-" + "1" * 500 + "." + "2" * 500,
    ),
    "past_python_int": ("7" * (INT_MAX_DIGITS + 1), "7" * (INT_MAX_DIGITS + 1)),
    "largest_scale": ("1e-16383", "0." + "0" * 16382 + "1"),
}
SENT = "{" + ", ".join(f'"{key}": {sent}' for key, (sent, _) in NUMBERS.items()) + "}"
# Nested, too: in a list and an object.
DOCUMENT = '{"numbers": ' + SENT + ', "list": [' + SENT + "]}"
STORED = {key: stored for key, (_, stored) in NUMBERS.items()}
EXPECTED = {"numbers": STORED, "list": [STORED]}


def as_text(response: httpx.Response) -> Any:
    """The response body with every number as the text the server wrote."""
    assert response.status_code < 300, response.text
    return json.loads(response.text, parse_float=str, parse_int=str)


async def send(
    client: httpx.AsyncClient,
    caller: Caller,
    method: str,
    url: str,
    body: str,
    **headers: str,
) -> httpx.Response:
    return await client.request(
        method,
        url,
        content=body.encode(),
        headers={
            **caller.headers,
            "Content-Type": "application/json",
            **{name.replace("_", "-"): value for name, value in headers.items()},
        },
    )


async def test_numbers_round_trip_exactly_through_runs_and_step_logs(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    workflow = await create_workflow(client, developer)
    triggered = await send(
        client,
        developer,
        "POST",
        f"/api/v1/workflows/{workflow['id']}/runs",
        '{"inputs": ' + DOCUMENT + "}",
    )
    run = as_text(triggered)
    assert run["inputs"] == EXPECTED
    run_url = f"/api/v1/runs/{run['id']}"
    assert (await client.post(f"{run_url}/start", headers=developer.headers)).status_code == 200

    appended = await send(
        client,
        developer,
        "POST",
        f"{run_url}/step-logs",
        f'{{"step_position": 0, "input": {DOCUMENT}, "output": {DOCUMENT}}}',
    )
    log = as_text(appended)
    assert log["input"] == log["output"] == EXPECTED
    finished = await send(
        client,
        developer,
        "POST",
        f"{run_url}/step-logs/{log['id']}/finish",
        f'{{"status": "completed", "output": {DOCUMENT}}}',
    )
    assert as_text(finished)["output"] == EXPECTED
    completed = await send(
        client, developer, "POST", f"{run_url}/complete", f'{{"outputs": {DOCUMENT}}}'
    )
    assert as_text(completed)["outputs"] == EXPECTED

    detail = as_text(await client.get(run_url, headers=developer.headers))
    assert detail["inputs"] == detail["outputs"] == EXPECTED
    [stored_log] = detail["step_logs"]
    assert stored_log["input"] == stored_log["output"] == EXPECTED
    listed = as_text(
        await client.get(f"/api/v1/workflows/{workflow['id']}/runs", headers=developer.headers)
    )
    assert listed["items"][0]["inputs"] == listed["items"][0]["outputs"] == EXPECTED

    # The events carry the same digits (built in SQL from the JSONB).
    [created] = await DB.fetch(
        "SELECT payload -> 'inputs' AS inputs FROM outbox WHERE event_type = 'run.created'"
    )
    assert json.loads(created["inputs"], parse_float=str, parse_int=str) == EXPECTED

    # An idempotent retry with the same numbers is the same request.
    for _ in range(2):
        retried = await client.post(
            f"/api/v1/workflows/{workflow['id']}/runs",
            content=('{"inputs": ' + DOCUMENT + "}").encode(),
            headers={
                **developer.headers,
                "Content-Type": "application/json",
                "Idempotency-Key": "exact",
            },
        )
        assert retried.status_code in (200, 201), retried.text
        assert as_text(retried)["inputs"] == EXPECTED


# A retry policy is no free document since issue 18 (flowforge.api.schemas.RetryPolicy):
# its numbers are bounded counts and seconds, shown as sent.
RETRY_POLICY = (
    '{"max_attempts": 3, "backoff": {"initial_seconds": 0.5, "multiplier": 2.5}, "jitter": 0.1}'
)
RETRY_POLICY_SHOWN = {
    "max_attempts": "3",
    "backoff": {"initial_seconds": "0.5", "multiplier": "2.5"},
    "jitter": "0.1",
}


async def test_numbers_round_trip_exactly_through_workflows(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    body = (
        '{"name": "Exact", "trigger_config": '
        + DOCUMENT
        + ', "steps": [{"name": "One", "action_type": "noop", "config": '
        + DOCUMENT
        + ', "retry_policy": '
        + RETRY_POLICY
        + "}]}"
    )
    workflow = as_text(await send(client, developer, "POST", "/api/v1/workflows", body))
    url = f"/api/v1/workflows/{workflow['id']}"
    read = as_text(await client.get(url, headers=developer.headers))
    for shown in (workflow, read):
        assert shown["trigger_config"] == EXPECTED
        assert shown["steps"][0]["config"] == EXPECTED
        assert shown["steps"][0]["retry_policy"] == RETRY_POLICY_SHOWN
    patched = as_text(
        await send(
            client,
            developer,
            "PATCH",
            url,
            '{"trigger_config": {"n": 0.30000000000000001}}',
            If_Match=f'"{read["revision"]}"',
        )
    )
    assert patched["trigger_config"] == {"n": "0.30000000000000001"}
    listed = as_text(await client.get("/api/v1/workflows", headers=developer.headers))
    assert listed["items"][0]["trigger_config"] == {"n": "0.30000000000000001"}


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
async def test_nan_and_infinity_are_refused_naming_them(
    client: httpx.AsyncClient, developer: Caller, literal: str
) -> None:
    workflow = await create_workflow(client, developer)
    response = await send(
        client,
        developer,
        "POST",
        f"/api/v1/workflows/{workflow['id']}/runs",
        f'{{"inputs": {{"x": [{literal}]}}}}',
    )
    assert response.status_code == 422, response.text
    [problem] = response.json()["error"]["details"]["problems"]
    assert problem["location"] == "body.inputs"
    assert "must not contain NaN or Infinity" in problem["message"]
    assert await count("workflow_runs") == 0


@pytest.mark.parametrize(
    ("number", "message"),
    [
        # PostgreSQL's numeric holds 16,383 digits after the decimal point.
        ("1e-16384", f"more than {NUMERIC_MAX_SCALE} digits after the decimal point"),
        ("0." + "1" * (NUMERIC_MAX_SCALE + 1), "digits after the decimal point"),
        # Seven bytes in the request, 70,001 written out (as JSONB returns them).
        ("1e70000", f"must be at most {MAX_JSON_BYTES} bytes as JSON"),
        # Many short numbers, each long written out: refused before they are written out.
        ("[" + ",".join(["1e9999"] * 50) + "]", f"must be at most {MAX_JSON_BYTES} bytes"),
    ],
)
async def test_numbers_past_what_jsonb_stores_are_refused_saying_why(
    client: httpx.AsyncClient, developer: Caller, number: str, message: str
) -> None:
    workflow = await create_workflow(client, developer)
    response = await send(
        client,
        developer,
        "POST",
        f"/api/v1/workflows/{workflow['id']}/runs",
        f'{{"inputs": {{"x": {number}}}}}',
    )
    assert response.status_code == 422, response.text
    [problem] = response.json()["error"]["details"]["problems"]
    assert problem["location"] == "body.inputs"
    assert message in problem["message"]
    assert await count("workflow_runs") == 0


async def test_an_integer_field_takes_exact_integers(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    workflow = await create_workflow(client, developer)
    run = await send(client, developer, "POST", f"/api/v1/workflows/{workflow['id']}/runs", "{}")
    run_url = f"/api/v1/runs/{run.json()['id']}"
    await client.post(f"{run_url}/start", headers=developer.headers)
    # 1E0 is the integer 1 (JSON Schema), 1.5 is not an integer.
    logged = await send(client, developer, "POST", f"{run_url}/step-logs", '{"step_position": 1E0}')
    assert logged.status_code == 201, logged.text
    assert logged.json()["step_position"] == 1
    refused = await send(
        client, developer, "POST", f"{run_url}/step-logs", '{"step_position": 1.5}'
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["details"]["problems"][0]["location"] == "body.step_position"


async def test_the_log_publisher_writes_event_numbers_exactly(db: None) -> None:
    from flowforge.relay.publishers import LogPublisher
    from flowforge.relay.relay import Relay
    from tests import relay_support

    await DB.fetch(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) "
        "VALUES ('workflow_run', gen_random_uuid(), 'test.event', $1::jsonb)",
        SENT,
    )
    out = io.StringIO()
    relay = Relay(relay_support.relay_settings(), LogPublisher(out))
    assert (await relay.run_once()).published == 1
    [line] = out.getvalue().splitlines()
    assert json.loads(line, parse_float=str, parse_int=str)["payload"] == STORED


# -- a body that is not JSON: 400 bad_request, saying where it broke ----------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/workflows"),
        ("PATCH", "/api/v1/workflows/{workflow_id}"),
        ("PUT", "/api/v1/workflows/{workflow_id}/steps"),
        ("POST", "/api/v1/workflows/{workflow_id}/runs"),
        ("POST", "/api/v1/runs/{run_id}/complete"),
        ("POST", "/api/v1/runs/{run_id}/step-logs"),
        ("POST", "/api/v1/api-keys"),
        ("POST", "/api/v1/users"),
    ],
)
async def test_a_malformed_body_is_400_bad_request_saying_where(
    client: httpx.AsyncClient, admin: Caller, method: str, path: str
) -> None:
    workflow = await create_workflow(client, admin)
    run = await send(client, admin, "POST", f"/api/v1/workflows/{workflow['id']}/runs", "{}")
    url = path.format(workflow_id=workflow["id"], run_id=run.json()["id"])
    events_before = await count("outbox")

    response = await send(client, admin, method, url, '{\n  "name": ')
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request"
    assert error["message"] == ("The body is not valid JSON: Expecting value at line 2 column 11.")
    assert error["details"] == {"line": 2, "column": 11, "position": 12}
    assert await count("outbox") == events_before


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "Expecting property name enclosed in double quotes at line 1 column 2."),
        (b'{"name" "x"}', "Expecting ':' delimiter at line 1 column 9."),
        (b'{"name": "x"} {}', "Extra data at line 1 column 15."),
        (b'{"name": "\xff"}', "Invalid utf-8 at line 1 column 11."),
        (b"[" * 100_000 + b"]" * 100_000, None),
    ],
)
async def test_the_400_names_what_broke(
    client: httpx.AsyncClient, developer: Caller, body: bytes, message: str | None
) -> None:
    response = await client.post(
        "/api/v1/workflows",
        content=body,
        headers={**developer.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request"
    if message is None:  # valid JSON, but deeper than Python's recursion limit
        assert error["message"] == "The body is nested too deeply to be read."
    else:
        assert error["message"] == f"The body is not valid JSON: {message}"


def test_every_product_route_reads_and_writes_exact_json() -> None:
    import importlib
    import pkgutil

    from fastapi.routing import APIRoute

    from flowforge.api import routes
    from flowforge.api.jsonbody import ExactJSONRoute

    product_routes: list[APIRoute] = []
    for module in pkgutil.iter_modules(routes.__path__):
        router = importlib.import_module(f"{routes.__name__}.{module.name}").router
        product_routes += [route for route in router.routes if isinstance(route, APIRoute)]
    assert len(product_routes) > 20
    assert [r.path for r in product_routes if not isinstance(r, ExactJSONRoute)] == []
