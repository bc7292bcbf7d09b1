"""openapi.yaml against the LIVE receiver over HTTP, with schemathesis generating the requests.

Every operation is exercised with schema-valid and schema-invalid inputs; every response must be no 5xx
and conform to the spec (status code, content type, headers, body schema). Two passes over the webhook
route: as generated (so mostly unsigned or badly signed: 401, which must conform too), and with each
generated body signed with the configured secret, so bodies reach the JSON and envelope checks and the
2xx/400 answers are checked against the spec as well.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeAlias

import hypothesis
import pytest
import requests
import schemathesis
from schemathesis import APIOperation, Case, GenerationMode

from runinfra_webhooks.service.console.app import create_console_app
from runinfra_webhooks.service.core.signature import sign
from runinfra_webhooks.service.receiver.app import create_app
from tests.builders import SECRET
from tests.conftest import make_settings
from tests.redis_server import RedisServer
from tests.servers import serve_in_thread

GeneratedCase: TypeAlias = Case[APIOperation[Any, Any, Any, Any]]
SPEC = Path(__file__).resolve().parent.parent / "openapi.yaml"
MAX_EXAMPLES = 100

schema = schemathesis.openapi.from_path(SPEC)
schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True)
receiver = schema.exclude(path_regex="^/api/")  # the console's API is served by another process
console_api = schema.include(path_regex="^/api/")
webhook = schema.include(path="/webhooks/runinfra", method="POST")
CONSOLE_TOKEN = "console-token-for-schemathesis-0123456789"
CONSOLE_EXAMPLES = 30


@pytest.fixture(scope="module")
def live_url(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = make_settings(redis_server.url, tmp_path_factory.mktemp("schemathesis"))
    with serve_in_thread(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@receiver.parametrize()
@hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_every_operation_conforms(case: GeneratedCase, live_url: str, session: requests.Session) -> None:
    """As generated: whatever schemathesis sends, the answer is no 5xx and matches the spec."""
    case.call_and_validate(base_url=live_url, session=session, timeout=30)


def send_signed(case: GeneratedCase, live_url: str, session: requests.Session) -> requests.Response:
    """Send a generated case with its body signed like RunInfra signs it (any generated signature dropped)."""
    kwargs = case.as_transport_kwargs(base_url=live_url)
    if "json" in kwargs:
        raw = json.dumps(kwargs.pop("json")).encode()
    else:
        data = kwargs.pop("data", b"")
        raw = data.encode() if isinstance(data, str) else (data or b"")
    headers = dict(kwargs.pop("headers", None) or {})
    headers = {k: v for k, v in headers.items() if k.lower() != "runinfra-signature"}
    headers["runinfra-signature"] = sign(raw, SECRET, int(time.time()))
    response: requests.Response = session.request(**kwargs, data=raw, headers=headers, timeout=30)
    return response


def answer_of(response: requests.Response) -> str:
    """``"<status> <code or status field>"``, e.g. ``"400 invalid_json"`` or ``"202 queued"``."""
    document = response.json()
    return f"{response.status_code} {document.get('code') or document.get('status')}"


@webhook.parametrize()
@hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_signed_generated_deliveries_conform(case: GeneratedCase, live_url: str, session: requests.Session) -> None:
    """Generated bodies, signed like RunInfra signs: they get past the signature, and 2xx/400 conform."""
    body = case.as_transport_kwargs(base_url=live_url).get("json")
    response = send_signed(case, live_url, session)
    assert response.status_code not in {401, 500}, response.text
    if isinstance(body, dict) and type(body.get("created")) is float:
        # JSON Schema cannot tell 432.0 from 432; the spec's description says a fraction is rejected.
        assert response.status_code == 400 and response.json()["code"] == "invalid_event", response.text
        return
    case.validate_response(response)


def test_the_signed_pass_reached_every_kind_of_answer(live_url: str, session: requests.Session) -> None:
    """A signed pass of generated deliveries gets 2xx and both 400s back, not just one kind of answer."""
    operation = schema["/webhooks/runinfra"]["POST"]
    answers: Counter[str] = Counter()

    @hypothesis.given(hypothesis.strategies.one_of(*(operation.as_strategy(mode) for mode in GenerationMode)))
    @hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    def signed_pass(case: GeneratedCase) -> None:
        answers[answer_of(send_signed(case, live_url, session))] += 1

    signed_pass()
    seen = set(answers)
    assert {"400 invalid_json", "400 invalid_event"} <= seen, answers
    assert seen & {"202 queued", "202 dead_lettered", "200 duplicate", "200 ignored"}, answers


@pytest.fixture(scope="module")
def console_url(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = make_settings(redis_server.url, tmp_path_factory.mktemp("schemathesis-console"),
                             RUNINFRA_CONSOLE_TOKEN=CONSOLE_TOKEN)
    with serve_in_thread(create_console_app(settings)) as url:
        yield url


@console_api.parametrize()
@hypothesis.settings(max_examples=CONSOLE_EXAMPLES, deadline=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_every_console_operation_conforms(case: GeneratedCase, console_url: str, session: requests.Session) -> None:
    """The console API with the bearer token: whatever is generated, no 5xx and the answer matches the spec."""
    # A cursor is an opaque token: any string fits its schema, but only the console's own are accepted.
    # Negative cases are not checked for rejection here: the token is added to every call (so a case made
    # "negative" by leaving it out is not), and unknown query parameters are ignored by design.
    case.call_and_validate(base_url=console_url, session=session, timeout=30,
                           headers={"Authorization": f"Bearer {CONSOLE_TOKEN}"},
                           excluded_checks=[schemathesis.checks.positive_data_acceptance,
                                            schemathesis.checks.negative_data_rejection])
