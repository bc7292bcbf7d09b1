"""Small answers to hostile requests: unbounded `created`, and paths that used to redirect."""

from __future__ import annotations

import json

import httpx
import pytest
import redis as sync_redis

from runinfra_webhooks.service.storage import keys
from tests.builders import example_event, signed_delivery

PATH = "/webhooks/runinfra"


def _post(url: str, event: dict[str, object]) -> httpx.Response:
    body, headers = signed_delivery(body=json.dumps(event).encode())
    return httpx.post(url + PATH, content=body, headers=headers, timeout=10)


@pytest.mark.parametrize("created", [10**4300 - 1, 2**53 + 1, 10**12], ids=["4300-digits", "2**53+1", "10**12"])
def test_rejects_a_created_beyond_twelve_digits_as_invalid_event(receiver_url: str, created: int) -> None:
    """created past 12 digits (what a signature's t can hold) is 400 invalid_event, never queued."""
    resp = _post(receiver_url, example_event("deployment.created", created=created))
    assert resp.status_code == 400, resp.text
    assert resp.json()["code"] == "invalid_event"
    assert "created" in resp.json()["detail"]


def test_accepts_the_largest_twelve_digit_created(receiver_url: str) -> None:
    """10**12 - 1 is still a valid created: 202 queued."""
    resp = _post(receiver_url, example_event("deployment.created", created=10**12 - 1))
    assert resp.status_code == 202, resp.text


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", PATH + "/", 404), ("GET", PATH + "/", 404), ("GET", "/healthz/", 404), ("GET", "/readyz/", 404),
    ("GET", "/metrics/", 404), ("GET", PATH, 405), ("POST", "/healthz", 405),
])
def test_answers_a_problem_document_and_never_redirects(receiver_url: str, method: str, path: str,
                                                        status: int) -> None:
    """A trailing slash or a wrong method is a 404/405 problem document, with no Location from our Host."""
    resp = httpx.request(method, receiver_url + path, headers={"Host": "evil.example"}, content=b"{}",
                         timeout=10, follow_redirects=False)
    assert resp.status_code == status
    assert "location" not in resp.headers
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["code"] == {404: "not_found", 405: "method_not_allowed"}[status]


def test_answers_500_ingest_failed_and_writes_nothing_when_the_ingest_script_refuses(
    receiver_url: str, redis_url: str
) -> None:
    """A corrupt audit head: the script refuses before writing; 500 ingest_failed, no dedup mark, no job."""
    db = sync_redis.Redis.from_url(redis_url)
    db.hset(keys.AUDIT_HEAD, mapping={"seq": "abc", "hash": "0" * 40})
    event = example_event()
    resp = _post(receiver_url, event)
    assert resp.status_code == 500, resp.text
    assert resp.json()["code"] == "ingest_failed"
    assert not db.exists(keys.dedup(event["id"]), keys.event(event["id"]), keys.AUDIT_STREAM)
    assert db.zcard(keys.ARQ_QUEUE) == 0
