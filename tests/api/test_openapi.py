"""The OpenAPI description is complete: statuses, headers, examples, health schemas (issue 9)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydantic import BaseModel, TypeAdapter

from flowforge.api import health
from flowforge.api.app import create_app
from flowforge.api.examples import SCHEMA_EXAMPLES
from flowforge.api.routes import api_keys, runs, users, workflows
from flowforge.api.schemas import ErrorDetail, ErrorResponse, JsonObject, Page
from flowforge.db.tables import Role, RunStatus, Scope, TriggerType
from flowforge.domain.pagination import CURSOR_PATTERN, decode_cursor, encode_cursor

MODELS: dict[str, Any] = {
    "Page_UserOut_": Page[users.UserOut],
    "Page_ApiKeyOut_": Page[api_keys.ApiKeyOut],
    "Page_WorkflowSummary_": Page[workflows.WorkflowSummary],
    "Page_RunOut_": Page[runs.RunOut],
    "Role": Role,
    "Scope": Scope,
    "TriggerType": TriggerType,
    "RunStatus": RunStatus,
    "ErrorDetail": ErrorDetail,
    "ErrorResponse": ErrorResponse,
    "JsonObject": JsonObject,
    "JsonValue": Any,
}


def model_for(name: str) -> Any:
    if name in MODELS:
        return MODELS[name]
    for module in (users, api_keys, workflows, runs, health):
        model = getattr(module, name, None)
        if isinstance(model, type) and issubclass(model, BaseModel):
            return model
    raise AssertionError(f"no model for the schema {name}")


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return create_app().openapi()


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    ]


def test_every_schema_has_an_example_the_server_would_accept(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    assert len(schemas) >= 34
    for name, schema in schemas.items():
        assert schema.get("examples"), f"{name} has no example"
        [example] = schema["examples"]
        assert example == SCHEMA_EXAMPLES.get(name, example)
        TypeAdapter(model_for(name)).validate_python(example)


def test_every_operation_has_examples_and_its_error_statuses(spec: dict[str, Any]) -> None:
    assert len(operations(spec)) >= 30
    for method, path, operation in operations(spec):
        label = f"{method} {path}"
        responses = operation["responses"]
        if "requestBody" in operation:
            assert "example" in operation["requestBody"]["content"]["application/json"], label
        for status, response in responses.items():
            if status != "204":
                assert "example" in response["content"]["application/json"], (label, status)
        if not path.startswith("/api/v1/"):
            continue
        expected = {"401", "413", "422", "503"} | ({"400"} if "requestBody" in operation else set())
        assert expected <= set(responses), (label, sorted(responses))
        assert "WWW-Authenticate" in responses["401"]["headers"], label
        assert "Retry-After" in responses["503"]["headers"], label
        for status in set(responses) - {"200", "201", "204"}:
            ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorResponse"), (label, status)


def test_trigger_documents_its_headers(spec: dict[str, Any]) -> None:
    responses = spec["paths"]["/api/v1/workflows/{workflow_id}/runs"]["post"]["responses"]
    assert set(responses["201"]["headers"]) == {"Location"}
    assert set(responses["200"]["headers"]) == {"Location", "Idempotent-Replayed"}


def test_readyz_documents_both_answers(spec: dict[str, Any]) -> None:
    responses = spec["paths"]["/readyz"]["get"]["responses"]
    schemas = spec["components"]["schemas"]
    for status, name in [("200", "Ready"), ("503", "NotReady")]:
        ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith(f"/{name}")
        assert schemas[name]["properties"]["postgres"]


async def test_readyz_answers_match_their_schemas(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    health.Ready.model_validate(response.json())
    health.NotReady.model_validate({"postgres": "error: no answer within 3s"})


def test_the_cursor_pattern_is_what_the_server_accepts(spec: dict[str, Any]) -> None:
    import datetime
    import re
    import uuid

    parameters = spec["paths"]["/api/v1/workflows"]["get"]["parameters"]
    [cursor] = [p for p in parameters if p["name"] == "cursor"]
    pattern = next(o["pattern"] for o in cursor["schema"]["anyOf"] if "pattern" in o)
    assert pattern == CURSOR_PATTERN
    assert not re.search(pattern, "")
    now = datetime.datetime.now(datetime.UTC)
    item = uuid.uuid4()
    made = encode_cursor(now, item)
    assert re.fullmatch(pattern, made)
    assert decode_cursor(made) == (now, item)
    # Every string the pattern allows names a position.
    for text in ["0_" + "0" * 32, "9" * 17 + "_" + "f" * 32]:
        assert decode_cursor(text) is not None


def test_rules_the_server_enforces_are_in_the_schema(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    for name in ("StepLogAppend", "StepLogFinish"):
        assert schemas[name]["if"]["properties"]["status"] == {"const": "failed"}
        assert schemas[name]["then"]["required"] == ["error"]
    for name in ("StepList", "WorkflowCreate"):
        assert len(schemas[name]["anyOf"]) == 2  # a position on every step, or on none
    assert schemas["JsonObject"]["propertyNames"]["pattern"] == "^[^\\x00]*$"
    assert "\\x00" in schemas["UserCreate"]["properties"]["email"]["pattern"]
    started_at = schemas["StepLogAppend"]["properties"]["started_at"]["anyOf"][0]
    assert started_at["pattern"].startswith("^(19[7-9]")
