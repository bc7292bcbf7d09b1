"""The library API: ``runinfra_webhooks.Webhook`` verifies and parses deliveries inside anyone's web app."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

import pytest
from starlette.datastructures import Headers

import runinfra_webhooks
from runinfra_webhooks import (
    DeploymentReady,
    Envelope,
    InvalidEventError,
    Outcome,
    TranscriptionCompleted,
    Webhook,
    WebhookVerificationError,
    sign,
)
from tests.builders import example_event
from tests.test_signature import CASES, NOW, OTHER, SECRET


def _case_parts(case: dict[str, Any]) -> tuple[Webhook, bytes, dict[str, str]]:
    webhook = Webhook(case["secrets"], tolerance=case["tolerance"])
    headers = {} if case["header"] is None else {"Runinfra-Signature": case["header"]}
    return webhook, base64.b64decode(case["body_b64"]), headers


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_verify_gives_each_contract_vector_its_outcome(case: dict[str, Any]) -> None:
    """Webhook.verify yields the vector's outcome and matching secret index, from a mapping of headers."""
    webhook, body, headers = _case_parts(case)
    result = webhook.verify(body, headers, now=case["now"])
    assert result.outcome == case["expect"]
    assert isinstance(result.outcome, Outcome)
    if "matched_secret_index" in case:
        assert result.secret_index == case["matched_secret_index"]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_construct_event_raises_the_vector_outcome_or_parses(case: dict[str, Any]) -> None:
    """construct_event raises WebhookVerificationError with the vector's code, or parses a verified body."""
    webhook, body, headers = _case_parts(case)
    if case["expect"] != "ok":
        with pytest.raises(WebhookVerificationError) as caught:
            webhook.construct_event(body, headers, now=case["now"])
        assert caught.value.code == case["expect"]
        for secret in case["secrets"]:
            assert secret not in str(caught.value)
        return
    try:
        event = webhook.construct_event(body, headers, now=case["now"])
    except InvalidEventError as exc:  # a verified body that is not an event is still told apart
        assert exc.code in {"invalid_json", "invalid_event", "invalid_payload"}
    else:
        assert isinstance(event, Envelope)
        assert event.id == json.loads(body)["id"]


def test_construct_event_returns_the_typed_model_of_a_catalogued_type() -> None:
    """A signed deployment.ready comes back as DeploymentReady with typed data."""
    body = json.dumps(example_event("deployment.ready", created=NOW)).encode()
    event = Webhook(SECRET).construct_event(body, {"runinfra-signature": sign(body, SECRET, NOW)}, now=NOW)
    assert isinstance(event, DeploymentReady)
    assert event.data.operations


def test_construct_event_returns_an_envelope_for_another_type() -> None:
    """A type outside the catalogue parses as the Envelope, data kept as given."""
    body = json.dumps({"id": "evt_x", "type": "batch.finished", "created": NOW, "data": {"n": 3}}).encode()
    event = Webhook(SECRET).construct_event(body, sign(body, SECRET, NOW), now=NOW)
    assert type(event) is Envelope
    assert (event.type, event.data) == ("batch.finished", {"n": 3})


@pytest.mark.parametrize(("body", "code"), [
    (b"[1, 2]", "invalid_json"),
    (b"\xff\xfe", "invalid_json"),
    (b'{"id": "evt_1", "type": "deployment.ready", "data": {}}', "invalid_event"),
    (b'{"id": "evt_1", "type": "deployment.ready", "created": 1, "data": {"model": 3}}', "invalid_payload"),
])
def test_construct_event_names_why_a_verified_body_is_not_an_event(body: bytes, code: str) -> None:
    """InvalidEventError.code says invalid_json, invalid_event or invalid_payload."""
    with pytest.raises(InvalidEventError) as caught:
        Webhook(SECRET).construct_event(body, {"runinfra-signature": sign(body, SECRET, NOW)}, now=NOW)
    assert caught.value.code == code


def test_headers_are_looked_up_case_insensitively_in_any_mapping() -> None:
    """A dict in any case, Starlette's Headers, the bare header value or a str body all verify."""
    body = '{"id":"evt_1","type":"a.b","created":1,"data":{}}'
    header = sign(body, SECRET, NOW)
    webhook = Webhook(SECRET)
    for headers in ({"RUNINFRA-SIGNATURE": header}, Headers({"runinfra-signature": header}), header):
        assert webhook.verify(body, headers, now=NOW).outcome is Outcome.OK
        assert webhook.verify(body.encode(), headers, now=NOW).outcome is Outcome.OK


def test_rotation_reports_which_secret_matched() -> None:
    """With two secrets, a delivery signed under the second verifies with secret_index 1."""
    body = b'{"id":"evt_1","type":"a.b","created":1,"data":{}}'
    result = Webhook([SECRET, OTHER]).verify(body, {"runinfra-signature": sign(body, OTHER, NOW)}, now=NOW)
    assert (result.outcome, result.secret_index, result.timestamp) == (Outcome.OK, 1, NOW)


def test_verify_never_raises_on_junk() -> None:
    """Headers of the wrong kind give an outcome, never an exception."""
    webhook = Webhook(SECRET)
    for headers in (None, 42, {"runinfra-signature": 7}, {"other": "x"}, b"t=1,v1=00"):
        assert webhook.verify(b"{}", headers, now=NOW).outcome in set(Outcome)  # type: ignore[arg-type]


def test_sign_defaults_to_now() -> None:
    """sign() without a timestamp signs at the current time, which verifies inside the tolerance."""
    header = sign(b"{}", SECRET)
    assert Webhook(SECRET).verify(b"{}", header).outcome is Outcome.OK


def test_the_webhook_repr_never_shows_a_secret() -> None:
    """repr(Webhook) counts the secrets and shows none of them."""
    assert SECRET not in repr(Webhook([SECRET, OTHER]))


def test_typed_models_and_version_are_public_names() -> None:
    """The facade lists the models, errors, handler API and its version in __all__."""
    for name in ("Webhook", "sign", "WebhookVerificationError", "InvalidEventError", "Envelope", "DeploymentCreated",
                 "DeploymentReady", "DeploymentUpdated", "DeploymentFailed", "DeploymentDeleted",
                 "TranscriptionCompleted", "handler", "HandlerContext", "PermanentError", "TransientError",
                 "__version__"):
        assert name in runinfra_webhooks.__all__
        assert getattr(runinfra_webhooks, name) is not None
    assert runinfra_webhooks.__version__[0].isdigit()
    assert TranscriptionCompleted.model_fields["type"].annotation is not None


def test_importing_the_library_loads_no_queue_server_or_redis() -> None:
    """`import runinfra_webhooks` and a construct_event call load neither arq, uvicorn nor redis."""
    code = f"""
import sys, json
import runinfra_webhooks as rw
body = json.dumps({{"id": "evt_1", "type": "deployment.deleted", "created": 1,
                   "data": {{"deployment_id": "d", "pipeline_id": "p"}}}}).encode()
rw.Webhook("{SECRET}").construct_event(body, {{"runinfra-signature": rw.sign(body, "{SECRET}")}})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {{"arq", "uvicorn", "redis", "hiredis"}})
print(json.dumps(loaded))
"""
    env = {"PATH": "/usr/bin:/bin"}  # no RUNINFRA_* or REDIS_URL: the library needs no environment
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                         check=True, cwd="/")
    assert json.loads(out.stdout) == []
