"""The receiver over real HTTP against a real redis-server: every answer the contract defines."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from runinfra_webhooks.service.receiver.app import create_app
from runinfra_webhooks.service.storage import keys
from tests.builders import OLD_SECRET, WEBHOOK_PATH, example_event, post_delivery, signed_delivery
from tests.conftest import make_settings
from tests.redis_server import Db, RedisServer, as_db
from tests.servers import serve_in_thread


def assert_problem(resp: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    problem: dict[str, object] = resp.json()
    assert problem["code"] == code
    assert problem["status"] == status
    assert {"type", "title", "detail", "request_id"} <= problem.keys()
    assert problem["request_id"] == resp.headers["x-request-id"]
    return problem


def test_queues_a_new_catalogued_event(receiver_url: str, db: Db) -> None:
    """A new signed event is answered 202 queued, and its record, arq job and audit entry exist."""
    event = example_event("deployment.ready")
    resp = post_delivery(receiver_url, *signed_delivery(event))
    assert resp.status_code == 202
    assert resp.json() == {"status": "queued", "event_id": event["id"]}
    assert db.hget(keys.event(event["id"]), "state") == b"queued"
    raw_job = db.get(keys.ARQ_JOB + keys.job_id(event["id"], 0))
    assert raw_job is not None
    job = json.loads(raw_job)
    assert job["f"] == "process_event" and job["a"] == [event["id"], 0]
    assert db.zscore(keys.ARQ_QUEUE, keys.job_id(event["id"], 0)) is not None
    assert db.ttl(keys.dedup(event["id"])) > 600_000
    assert db.xlen(keys.AUDIT_STREAM) == 1


def test_answers_duplicate_for_an_id_already_received(receiver_url: str, db: Db) -> None:
    """The second delivery of an id is 200 duplicate, audited, and not queued again."""
    event = example_event("deployment.created")
    first = post_delivery(receiver_url, *signed_delivery(event))
    second = post_delivery(receiver_url, *signed_delivery(event))
    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json() == {"status": "duplicate", "event_id": event["id"]}
    assert db.zcard(keys.ARQ_QUEUE) == 1
    outcomes = [e[1][b"outcome"] for e in db.xrange(keys.AUDIT_STREAM)]
    assert outcomes == [b"queued", b"duplicate"]


def test_concurrent_deliveries_of_one_id_queue_exactly_once(receiver_url: str, db: Db) -> None:
    """50 concurrent deliveries of one id give exactly one queued and 49 duplicates."""
    body, headers = signed_delivery(example_event("transcription.completed"))
    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(lambda _: post_delivery(receiver_url, body, headers).json()["status"], range(50)))
    assert statuses.count("queued") == 1
    assert statuses.count("duplicate") == 49
    assert db.zcard(keys.ARQ_QUEUE) == 1
    assert db.xlen(keys.AUDIT_STREAM) == 50


def test_ignores_a_signed_event_of_an_unknown_type(receiver_url: str, db: Db) -> None:
    """An uncatalogued type is 200 ignored: audited, recorded, never queued."""
    event = example_event("deployment.ready", type="billing.invoice_paid")
    resp = post_delivery(receiver_url, *signed_delivery(event))
    assert resp.status_code == 200
    assert resp.json() == {"status": "ignored", "event_id": event["id"]}
    assert db.zcard(keys.ARQ_QUEUE) == 0
    assert db.hget(keys.event(event["id"]), "state") == b"ignored"
    assert db.xlen(keys.AUDIT_STREAM) == 1


def test_unknown_fields_and_modalities_are_accepted(receiver_url: str) -> None:
    """Unknown envelope fields, unknown data fields and a new modality are not rejected."""
    event = example_event("deployment.created", brand_new_field={"x": 1})
    event["data"].update(modality="holograms", extra_data_field=True)
    assert post_delivery(receiver_url, *signed_delivery(event)).status_code == 202


def test_dead_letters_a_catalogued_event_whose_data_does_not_fit(receiver_url: str, db: Db) -> None:
    """A known type with bad data is 202 dead_lettered (invalid_payload): parked, audited, not queued."""
    event = example_event("deployment.failed")
    del event["data"]["error"]
    resp = post_delivery(receiver_url, *signed_delivery(event))
    assert resp.status_code == 202
    assert resp.json() == {"status": "dead_lettered", "event_id": event["id"], "reason": "invalid_payload"}
    assert db.zscore(keys.DEAD_LETTERS, event["id"]) is not None
    assert db.hget(keys.event(event["id"]), "reason") == b"invalid_payload"
    assert db.zcard(keys.ARQ_QUEUE) == 0


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_signature"),
        ("", "missing_signature"),
        ("t=abc,v1=00", "malformed_signature"),
        ("t=1700000000", "no_v1_signature"),
        ("t={now},v1=" + "0" * 64, "signature_mismatch"),
    ],
)
def test_rejects_bad_signatures_with_their_outcome_code(
    receiver_url: str, db: Db, header: str | None, code: str
) -> None:
    """Every non-ok signature outcome is a 401 problem carrying that outcome as its code; nothing is stored."""
    body, headers = signed_delivery()
    del headers["runinfra-signature"]
    if header is not None:
        headers["runinfra-signature"] = header.format(now=int(time.time()))
    assert_problem(post_delivery(receiver_url, body, headers), 401, code)
    assert db.dbsize() == 0


# 30 s past the edge: the client and the server read the clock at different instants.
@pytest.mark.parametrize(("offset", "code"), [(-330, "timestamp_too_old"), (330, "timestamp_too_new")])
def test_rejects_timestamps_outside_the_tolerance(receiver_url: str, offset: int, code: str) -> None:
    """A correctly signed delivery whose t is more than 300 s off is a 401 with the timestamp code."""
    body, headers = signed_delivery(timestamp=int(time.time()) + offset)
    assert_problem(post_delivery(receiver_url, body, headers), 401, code)


def test_accepts_a_delivery_signed_with_the_previous_secret(receiver_url: str, db: Db) -> None:
    """During rotation the second configured secret verifies too, and the audit entry records index 1."""
    event = example_event()
    assert post_delivery(receiver_url, *signed_delivery(event, secret=OLD_SECRET)).status_code == 202
    [(_, entry)] = db.xrange(keys.AUDIT_STREAM)
    assert entry[b"secret_index"] == b"1"


def test_problem_details_never_contain_the_expected_signature(receiver_url: str) -> None:
    """A mismatch answer names the outcome, not the signature the server computed."""
    body, headers = signed_delivery()
    good = headers["runinfra-signature"]
    headers["runinfra-signature"] = good[:-4] + "0000"
    resp = post_delivery(receiver_url, body, headers)
    assert_problem(resp, 401, "signature_mismatch")
    assert good.split("v1=")[1] not in resp.text


def test_rejects_a_body_over_the_limit_by_content_length(receiver_url: str) -> None:
    """A declared body over 1 MiB is 413 body_too_large."""
    body, headers = signed_delivery(body=b"{" + b" " * (1_048_576 + 10) + b"}")
    assert_problem(post_delivery(receiver_url, body, headers), 413, "body_too_large")


def test_rejects_a_chunked_body_over_the_limit(receiver_url: str) -> None:
    """A chunked body (no Content-Length) is cut off at the limit with 413."""

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"x" * 65_536

    _, headers = signed_delivery(body=b"{}")
    resp = httpx.post(receiver_url + WEBHOOK_PATH, content=chunks(), headers=headers, timeout=30)
    assert_problem(resp, 413, "body_too_large")


def test_rejects_signed_bodies_that_are_not_json_objects(receiver_url: str, db: Db) -> None:
    """Signed non-JSON, non-UTF-8 and non-object bodies are 400 invalid_json, and are still audited."""
    for body in (b"not json", b"\xff\xfe{}", b"[1,2]", b'{"a": NaN}', b"[" * 100_000 + b"]" * 100_000,
                 b'{"id": ' + b"9" * 5000 + b"}"):
        assert_problem(post_delivery(receiver_url, *signed_delivery(body=body)), 400, "invalid_json")
    outcomes = {e[1][b"outcome"] for e in db.xrange(keys.AUDIT_STREAM)}
    assert outcomes == {b"invalid_json"}
    assert db.zcard(keys.ARQ_QUEUE) == 0


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.pop("id"),
        lambda e: e.update(id=""),
        lambda e: e.update(id="has space"),
        lambda e: e.update(id="x" * 256),
        lambda e: e.pop("type"),
        lambda e: e.update(type="Deployment.Ready"),
        lambda e: e.update(created="1764086400"),
        lambda e: e.update(created=1.5),
        lambda e: e.pop("data"),
        lambda e: e.update(data=[1]),
    ],
)
def test_rejects_signed_json_without_a_valid_envelope(
    receiver_url: str, mutate: Callable[[dict[str, Any]], object]
) -> None:
    """A signed JSON object missing or mangling id, type, created or data is 400 invalid_event."""
    event = example_event()
    mutate(event)
    assert_problem(post_delivery(receiver_url, *signed_delivery(event)), 400, "invalid_event")


def test_other_methods_on_the_webhook_path_are_405(receiver_url: str) -> None:
    """GET/PUT/DELETE on the webhook path are 405 problems with an Allow header."""
    for method in ("GET", "PUT", "DELETE"):
        resp = httpx.request(method, receiver_url + WEBHOOK_PATH)
        assert_problem(resp, 405, "method_not_allowed")
        assert "POST" in resp.headers["allow"]


def test_every_response_carries_a_request_id(receiver_url: str) -> None:
    """The caller's sane x-request-id is echoed; a missing or insane one is replaced by a new one."""
    body, headers = signed_delivery()
    headers["x-request-id"] = "req-abc.123"
    assert post_delivery(receiver_url, body, headers).headers["x-request-id"] == "req-abc.123"
    headers["x-request-id"] = "bad id with spaces"
    assert post_delivery(receiver_url, body, headers).headers["x-request-id"] not in ("", "bad id with spaces")
    for path in ("/healthz", "/readyz", "/metrics", "/nope"):
        assert httpx.get(receiver_url + path).headers["x-request-id"]


def test_health_ready_and_metrics(receiver_url: str) -> None:
    """/healthz is 200, /readyz is 200 with persistence details, /metrics counts deliveries by outcome."""
    post_delivery(receiver_url, *signed_delivery())
    assert httpx.get(receiver_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(receiver_url + "/readyz").json()
    assert ready["status"] == "ready"
    assert ready["persistence"]["aof"] is False
    assert "persistence is off" in ready["persistence"]["warning"]
    metrics = httpx.get(receiver_url + "/metrics").text
    assert 'runinfra_webhook_deliveries_total{outcome="queued"} 1.0' in metrics
    assert "runinfra_webhook_request_seconds_bucket" in metrics


def test_redis_down_gives_503_with_retry_after_and_writes_nothing(own_redis: RedisServer, tmp_path: Path) -> None:
    """With Redis stopped, deliveries and /readyz get 503 unavailable; after restart, the retry is queued."""
    settings = make_settings(own_redis.url, tmp_path)
    event = example_event()
    with serve_in_thread(create_app(settings)) as url:
        own_redis.stop()
        resp = post_delivery(url, *signed_delivery(event))
        assert_problem(resp, 503, "unavailable")
        assert int(resp.headers["retry-after"]) > 0
        assert_problem(httpx.get(url + "/readyz", timeout=10), 503, "unavailable")
        assert httpx.get(url + "/healthz").status_code == 200
        own_redis.start()
        db = as_db(own_redis.client())
        assert db.dbsize() == 0
        assert post_delivery(url, *signed_delivery(event)).status_code == 202
        assert db.hget(keys.event(event["id"]), "state") == b"queued"
