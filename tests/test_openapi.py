"""openapi.yaml: a valid OpenAPI 3.1 document describing exactly the receiver's routes and the console's API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator

from tests.builders import EVENTS_DIR

ROOT = Path(__file__).resolve().parent.parent
SPEC: dict[str, Any] = yaml.safe_load((ROOT / "openapi.yaml").read_text("utf-8"))
EVENTS = sorted(EVENTS_DIR.glob("*.json"))

EXPECTED_OPERATIONS = {
    ("/webhooks/runinfra", "post"),
    ("/healthz", "get"),
    ("/readyz", "get"),
    ("/metrics", "get"),
    ("/api/v1/events", "get"),
    ("/api/v1/events/{event_id}", "get"),
    ("/api/v1/events/{event_id}/replay", "post"),
    ("/api/v1/replay", "post"),
    ("/api/v1/stats", "get"),
    ("/api/v1/deployments", "get"),
    ("/api/v1/audit/verify", "post"),
}
REQUIRED_CODES = {
    "missing_signature",
    "malformed_signature",
    "no_v1_signature",
    "signature_mismatch",
    "timestamp_too_old",
    "timestamp_too_new",
    "body_too_large",
    "invalid_json",
    "invalid_event",
    "unavailable",
    "request_timeout",
    "method_not_allowed",
    "not_found",
}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def operations() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method): op
        for path, item in SPEC["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    }


def schema_validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A JSON Schema 2020-12 validator for ``schema`` that resolves the spec's #/components refs."""
    return Draft202012Validator({**schema, "components": SPEC["components"]})


def schema_errors(schema: dict[str, Any], instance: object) -> list[str]:
    """Every way ``instance`` fails ``schema``, each with where it fails; empty when it validates."""
    return [f"{error.json_path}: {error.message}" for error in schema_validator(schema).iter_errors(instance)]


def problem_codes(schema: dict[str, Any]) -> set[str]:
    """Every code allowed by a (possibly allOf-narrowed) problem schema, as listed at its leaves."""
    codes: set[str] = set()
    code = schema.get("properties", {}).get("code", {})
    codes.update(code.get("enum", []))
    if "const" in code:
        codes.add(code["const"])
    for part in schema.get("allOf", []):
        codes |= problem_codes(part)
    return codes


def test_spec_validates_as_openapi_3_1() -> None:
    """openapi.yaml is a valid OpenAPI 3.1.0 document."""
    assert SPEC["openapi"] == "3.1.0"
    assert [error.message for error in OpenAPIV31SpecValidator(SPEC).iter_errors()] == []


def test_spec_lists_exactly_the_contract_routes() -> None:
    """The receiver's four routes and the console's seven API routes, nothing else."""
    assert set(operations()) == EXPECTED_OPERATIONS


def test_webhook_documents_every_contract_status() -> None:
    """The webhook route documents 202, 200, 400, 401, 405, 408, 413 and 503."""
    responses = operations()[("/webhooks/runinfra", "post")]["responses"]
    assert {"200", "202", "400", "401", "405", "408", "413", "503"} <= set(responses)
    assert "Retry-After" in responses["503"]["headers"]


def test_signature_header_is_documented_but_optional() -> None:
    """runinfra-signature is described, marked optional because its absence is answered with a 401."""
    params = operations()[("/webhooks/runinfra", "post")]["parameters"]
    signature = next(p for p in params if p.get("name") == "runinfra-signature")
    assert signature["in"] == "header"
    assert signature["required"] is False
    assert "missing_signature" in signature["description"]


def test_every_response_carries_request_id_header() -> None:
    """Each documented response declares the x-request-id header."""
    for (path, method), op in operations().items():
        for status, response in op["responses"].items():
            assert "x-request-id" in response.get("headers", {}), (path, method, status)


def test_problem_code_enum_contains_every_contract_code() -> None:
    """The Problem schema's code enum covers every problem code the service can send."""
    problem = SPEC["components"]["schemas"]["Problem"]
    assert set(problem["properties"]["code"]["enum"]) >= REQUIRED_CODES
    assert {"type", "title", "status", "detail", "code", "request_id"} <= set(problem["required"])


def test_problem_responses_only_narrow_to_known_codes() -> None:
    """Per-status code lists are subsets of the Problem enum and use application/problem+json."""
    known = set(SPEC["components"]["schemas"]["Problem"]["properties"]["code"]["enum"])
    expected = {
        "400": {"invalid_json", "invalid_event"},
        "401": {
            "missing_signature",
            "malformed_signature",
            "no_v1_signature",
            "signature_mismatch",
            "timestamp_too_old",
            "timestamp_too_new",
        },
        "405": {"method_not_allowed"},
        "408": {"request_timeout", "header_timeout"},
        "413": {"body_too_large"},
        "431": {"headers_too_large"},
        "503": {"unavailable", "too_many_connections"},
    }
    responses = operations()[("/webhooks/runinfra", "post")]["responses"]
    for status, codes in expected.items():
        schema = responses[status]["content"]["application/problem+json"]["schema"]
        assert problem_codes(schema) == codes, status
        assert codes <= known


@pytest.mark.parametrize("event", EVENTS, ids=[p.stem for p in EVENTS])
def test_accepts_contract_example_events_as_request_bodies(event: Path) -> None:
    """Every example delivery of the contract fits the request body schema."""
    schema = operations()[("/webhooks/runinfra", "post")]["requestBody"]["content"]["application/json"]
    assert schema_errors(schema["schema"], json.loads(event.read_text("utf-8"))) == []


@pytest.mark.parametrize(
    ("status", "body"),
    [
        ("202", {"status": "queued", "event_id": "evt_1"}),
        ("202", {"status": "dead_lettered", "event_id": "evt_1", "reason": "invalid_payload"}),
        ("200", {"status": "duplicate", "event_id": "evt_1"}),
        ("200", {"status": "ignored", "event_id": "evt_1"}),
    ],
)
def test_success_bodies_match_their_schemas(status: str, body: dict[str, Any]) -> None:
    """The contract's success bodies validate against the documented response schemas."""
    response = operations()[("/webhooks/runinfra", "post")]["responses"][status]
    assert schema_errors(response["content"]["application/json"]["schema"], body) == []


def test_rejects_unknown_success_status_in_schema() -> None:
    """A 202 body with a status outside the enum does not validate."""
    response = operations()[("/webhooks/runinfra", "post")]["responses"]["202"]
    validator = schema_validator(response["content"]["application/json"]["schema"])
    assert not validator.is_valid({"status": "accepted", "event_id": "evt_1"})


def test_readyz_documents_persistence_and_unavailable() -> None:
    """/readyz 200 body validates with persistence; its 503 is an unavailable problem."""
    responses = operations()[("/readyz", "get")]["responses"]
    ready = responses["200"]["content"]["application/json"]["schema"]
    body = {"status": "ready", "redis": "ok", "persistence": {"aof": True, "rdb": False, "warning": None}}
    assert schema_errors(ready, body) == []
    down = responses["503"]["content"]["application/problem+json"]["schema"]
    problem = {
        "type": "https://docs.runinfra.ai/webhooks/problems#unavailable",
        "title": "Storage unavailable; nothing was acknowledged",
        "status": 503,
        "detail": "redis unreachable",
        "code": "unavailable",
        "request_id": "r1",
    }
    assert schema_errors(down, problem) == []
    assert schema_errors(down, {**problem, "code": "not_found"}) != []



def test_console_routes_require_the_bearer_token_and_document_401() -> None:
    """Every /api/ operation names the consoleToken scheme and documents a 401 unauthorized problem."""
    assert SPEC["components"]["securitySchemes"]["consoleToken"]["scheme"] == "bearer"
    for (path, _), op in operations().items():
        if path.startswith("/api/"):
            assert op["security"] == [{"consoleToken": []}], path
            assert problem_codes(op["responses"]["401"]["content"]["application/problem+json"]["schema"]) == {
                "unauthorized"}, path
