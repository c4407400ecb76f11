"""The OpenAPI description is complete: statuses, headers, examples, health schemas (issue 9)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from pydantic import BaseModel, TypeAdapter

from flowforge.api import health
from flowforge.api.app import create_app
from flowforge.api.examples import SCHEMA_EXAMPLES
from flowforge.api.routes import api_keys, limits, runs, users, workflows
from flowforge.api.schemas import Backoff, ErrorDetail, ErrorResponse, JsonObject, Page, RetryPolicy
from flowforge.db.tables import Role, RunStatus, Scope, TriggerType
from flowforge.domain.pagination import CURSOR_PATTERN, decode_cursor, encode_cursor
from tests.api.conftest import Caller, create_workflow

MODELS: dict[str, Any] = {
    "Page_UserOut_": Page[users.UserOut],
    "Page_ApiKeyOut_": Page[api_keys.ApiKeyOut],
    "Page_WorkflowSummary_": Page[workflows.WorkflowSummary],
    "Page_VersionSummary_": Page[workflows.VersionSummary],
    "Page_RunOut_": Page[runs.RunOut],
    "Page_RunHistoryOut_": Page[runs.RunHistoryOut],
    "Page_ConcurrencyLimitOut_": Page[limits.ConcurrencyLimitOut],
    "Role": Role,
    "Scope": Scope,
    "TriggerType": TriggerType,
    "RunStatus": RunStatus,
    "ErrorDetail": ErrorDetail,
    "ErrorResponse": ErrorResponse,
    "JsonObject": JsonObject,
    "Backoff": Backoff,
    "RetryPolicy": RetryPolicy,
}


def model_for(name: str) -> Any:
    if name in MODELS:
        return MODELS[name]
    for module in (users, api_keys, workflows, runs, limits, health):
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
    for name in ("StepList", "WorkflowCreate"):  # a position on every step, or on none
        assert "position" in schemas[name]["then"]["properties"]["steps"]["items"]["required"]
    assert schemas["JsonObject"]["propertyNames"]["pattern"] == "^[^\\x00]*$"
    assert "\\x00" in schemas["UserCreate"]["properties"]["email"]["pattern"]
    started_at = schemas["StepLogAppend"]["properties"]["started_at"]["anyOf"][0]
    assert started_at["pattern"].startswith("^(19[7-9]")


def validator(spec: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator of the component `name`, its references resolved in the spec."""
    root = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    return jsonschema.Draft202012Validator(root)


def test_a_position_on_every_step_or_on_none(spec: dict[str, Any]) -> None:
    workflow = validator(spec, "WorkflowCreate")
    step = {"name": "s", "action_type": "x"}
    assert workflow.is_valid({"name": "w", "steps": [step, step]})
    assert workflow.is_valid(
        {"name": "w", "steps": [{**step, "position": 1}, {**step, "position": 0}]}
    )
    assert not workflow.is_valid({"name": "w", "steps": [step, {**step, "position": 0}]})
    assert not workflow.is_valid(
        {"name": "w", "steps": [{**step, "position": None}, {**step, "position": 0}]}
    )
    assert not workflow.is_valid({"steps": [step]})  # the name is required


# -- what client generators need (issue 15) -----------------------------------------------


def test_the_spec_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    """Against the OpenAPI 3.1 meta-schema (the copy schemathesis ships)."""
    from schemathesis.specs.openapi.definitions import OPENAPI_31

    assert spec["openapi"].startswith("3.1.")
    jsonschema.Draft202012Validator(OPENAPI_31).validate(spec)


# JSON Schema 2020-12's keywords and OpenAPI 3.1's own: any other keyword in a
# schema is something a generator or validator silently ignores (pydantic's
# `ge`/`le` once stood where `minimum`/`maximum` belong).
STANDARD_KEYWORDS = {
    # core and applicators
    *("$schema", "$id", "$ref", "$anchor", "$dynamicRef", "$dynamicAnchor", "$defs"),
    *("$comment", "$vocabulary", "allOf", "anyOf", "oneOf", "not", "if", "then", "else"),
    *("dependentSchemas", "prefixItems", "items", "contains", "properties"),
    *("patternProperties", "additionalProperties", "propertyNames"),
    *("unevaluatedItems", "unevaluatedProperties"),
    # validation
    *("type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum"),
    *("exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems"),
    *("uniqueItems", "maxContains", "minContains", "maxProperties", "minProperties"),
    *("required", "dependentRequired"),
    # meta-data, format, content
    *("title", "description", "default", "deprecated", "readOnly", "writeOnly", "examples"),
    *("format", "contentEncoding", "contentMediaType", "contentSchema"),
    # OpenAPI 3.1
    *("discriminator", "xml", "externalDocs", "example"),
}
SUBSCHEMA = {"not", "if", "then", "else", "items", "contains", "propertyNames"}
SUBSCHEMA_LIST = {"allOf", "anyOf", "oneOf", "prefixItems"}
SUBSCHEMA_MAP = {"$defs", "properties", "patternProperties", "dependentSchemas"}


def keywords(schema: Any, where: str) -> Iterator[tuple[str, str]]:
    """(location, keyword) of every keyword in a schema and its subschemas."""
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        yield where, key
        if key in SUBSCHEMA or key in {"additionalProperties", "unevaluatedProperties"}:
            yield from keywords(value, f"{where}/{key}")
        elif key in SUBSCHEMA_LIST:
            for index, item in enumerate(value):
                yield from keywords(item, f"{where}/{key}/{index}")
        elif key in SUBSCHEMA_MAP:
            for name, item in value.items():
                yield from keywords(item, f"{where}/{key}/{name}")


def all_schemas(spec: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for name, schema in spec["components"]["schemas"].items():
        yield f"#/components/schemas/{name}", schema
    for method, path, operation in operations(spec):
        label = f"{method} {path}"
        for parameter in operation.get("parameters", []):
            yield f"{label} {parameter['name']}", parameter["schema"]
        for media in operation.get("requestBody", {}).get("content", {}).values():
            yield f"{label} body", media["schema"]
        for status, response in operation["responses"].items():
            for media in response.get("content", {}).values():
                yield f"{label} {status}", media["schema"]
            for header, value in response.get("headers", {}).items():
                yield f"{label} {status} {header}", value["schema"]


def test_schemas_use_only_standard_keywords(spec: dict[str, Any]) -> None:
    unknown = [
        f"{where}: {key}"
        for label, schema in all_schemas(spec)
        for where, key in keywords(schema, label)
        if key not in STANDARD_KEYWORDS
    ]
    assert unknown == []


def test_json_documents_are_described_without_recursion(spec: dict[str, Any]) -> None:
    """A JSON object is an object of any values: no recursive union a generator drops."""
    schemas = spec["components"]["schemas"]
    assert schemas["JsonObject"]["type"] == "object"
    assert schemas["JsonObject"]["additionalProperties"] is True
    assert "JsonValue" not in schemas
    for name, schema in schemas.items():
        refs = {
            value for _, value in references(schema) if value.startswith("#/components/schemas/")
        }
        assert f"#/components/schemas/{name}" not in refs, f"{name} refers to itself"


def references(schema: Any) -> Iterator[tuple[str, str]]:
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "$ref":
                yield key, value
            else:
                yield from references(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from references(item)


def test_models_are_objects_not_unions(spec: dict[str, Any]) -> None:
    """`anyOf` beside `properties` makes generators build a union of partial models."""
    for name, schema in spec["components"]["schemas"].items():
        if "properties" in schema:
            assert not {"anyOf", "oneOf", "allOf"} & set(schema), name


def test_optional_bodies_are_objects_not_null(spec: dict[str, Any]) -> None:
    """An optional body is `required: false` with an object schema: never "or null"."""
    optional = []
    for method, path, operation in operations(spec):
        body = operation.get("requestBody")
        if body is None:
            continue
        schema = body["content"]["application/json"]["schema"]
        assert set(schema) == {"$ref"}, (method, path, schema)
        if not body.get("required"):
            optional.append(f"{method} {path}")
    assert optional == [
        "POST /api/v1/workflows/{workflow_id}/runs",
        "POST /api/v1/runs/{run_id}/complete",
        "POST /api/v1/runs/{run_id}/cancel",
    ]


async def test_an_optional_body_is_absent_or_an_object_never_null(
    client: httpx.AsyncClient, developer: Caller
) -> None:
    workflow = await create_workflow(client, developer)
    url = f"/api/v1/workflows/{workflow['id']}/runs"
    headers = {**developer.headers, "Content-Type": "application/json"}
    response = await client.post(url, content=b"null", headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"]["problems"][0]["location"] == "body"
    response = await client.post(url, headers=developer.headers)
    assert response.status_code == 201, response.text
    assert response.json()["inputs"] == {}
    run_id = response.json()["id"]
    response = await client.post(f"/api/v1/runs/{run_id}/cancel", content=b"null", headers=headers)
    assert response.status_code == 422, response.text
    response = await client.post(f"/api/v1/runs/{run_id}/cancel", headers=developer.headers)
    assert response.json()["status"] == "cancelled"


# Generated clients name their functions and modules after these: renaming one
# is a change of the API (say so in the changelog), not a refactoring.
OPERATION_IDS = {
    "GET /healthz": "healthz",
    "GET /readyz": "readyz",
    "GET /api/v1/me": "me",
    "POST /api/v1/users": "create_user",
    "GET /api/v1/users": "list_users",
    "GET /api/v1/users/{user_id}": "get_user",
    "PATCH /api/v1/users/{user_id}": "update_user",
    "POST /api/v1/users/{user_id}/deactivate": "deactivate_user",
    "POST /api/v1/users/{user_id}/activate": "activate_user",
    "POST /api/v1/api-keys": "create_api_key",
    "GET /api/v1/api-keys": "list_api_keys",
    "POST /api/v1/api-keys/{api_key_id}/revoke": "revoke_api_key",
    "POST /api/v1/workflows": "create_workflow",
    "GET /api/v1/workflows": "list_workflows",
    "GET /api/v1/workflows/{workflow_id}": "get_workflow",
    "PATCH /api/v1/workflows/{workflow_id}": "update_workflow",
    "DELETE /api/v1/workflows/{workflow_id}": "delete_workflow",
    "PUT /api/v1/workflows/{workflow_id}/steps": "replace_steps",
    "POST /api/v1/workflows/{workflow_id}/deactivate": "deactivate_workflow",
    "POST /api/v1/workflows/{workflow_id}/activate": "activate_workflow",
    "POST /api/v1/workflows/{workflow_id}/runs": "trigger_run",
    "GET /api/v1/workflows/{workflow_id}/runs": "list_runs",
    "GET /api/v1/workflows/{workflow_id}/versions": "list_versions",
    "GET /api/v1/workflows/{workflow_id}/versions/{version}": "get_version",
    "GET /api/v1/runs/{run_id}": "get_run",
    "GET /api/v1/runs/{run_id}/history": "list_run_history",
    "POST /api/v1/runs/claim": "claim_runs",
    "POST /api/v1/runs/{run_id}/start": "start_run",
    "POST /api/v1/runs/{run_id}/complete": "complete_run",
    "POST /api/v1/runs/{run_id}/fail": "fail_run",
    "POST /api/v1/runs/{run_id}/cancel": "cancel_run",
    "POST /api/v1/runs/{run_id}/step-logs": "append_step_log",
    "POST /api/v1/runs/{run_id}/heartbeat": "heartbeat",
    "POST /api/v1/runs/{run_id}/step-logs/{step_log_id}/finish": "finish_step_log",
    "POST /api/v1/concurrency-limits": "create_concurrency_limit",
    "GET /api/v1/concurrency-limits": "list_concurrency_limits",
    "GET /api/v1/concurrency-limits/{concurrency_limit}": "get_concurrency_limit",
    "PATCH /api/v1/concurrency-limits/{concurrency_limit}": "update_concurrency_limit",
    "DELETE /api/v1/concurrency-limits/{concurrency_limit}": "delete_concurrency_limit",
}


def test_operation_ids_are_the_operations_names(spec: dict[str, Any]) -> None:
    ids = {
        f"{method} {path}": operation["operationId"] for method, path, operation in operations(spec)
    }
    assert ids == OPERATION_IDS
    assert len(set(ids.values())) == len(ids)
