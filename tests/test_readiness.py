"""/readyz means "a delivery would be accepted now", checked against a real Redis that refuses writes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runinfra_webhooks.service.receiver.app import create_app
from tests.builders import signed_delivery
from tests.conftest import make_settings
from tests.redis_server import RedisServer
from tests.servers import serve_in_thread

PATH = "/webhooks/runinfra"


@pytest.fixture
def live(own_redis: RedisServer, tmp_path: Path) -> Iterator[str]:
    settings = make_settings(own_redis.url, tmp_path, RUNINFRA_READY_PROBE_TIMEOUT="0.5")
    with serve_in_thread(create_app(settings)) as url:
        yield url


def _ready(url: str) -> httpx.Response:
    return httpx.get(url + "/readyz", timeout=10)


def _deliver(url: str) -> httpx.Response:
    body, headers = signed_delivery()
    return httpx.post(url + PATH, content=body, headers=headers, timeout=15)


def test_readyz_is_503_while_redis_is_at_maxmemory(live: str, own_redis: RedisServer) -> None:
    """maxmemory reached (noeviction): deliveries get 503, and so does /readyz; 200 again once there is room."""
    assert _ready(live).status_code == 200
    db = own_redis.client()
    db.config_set("maxmemory-policy", "noeviction")
    db.config_set("maxmemory", "1")  # below what Redis already uses: every write that may grow is refused
    try:
        assert _deliver(live).status_code == 503
        refused = _ready(live)
        assert refused.status_code == 503
        assert refused.json()["code"] == "unavailable"
        assert "redis_oom" in refused.json()["detail"]
    finally:
        db.config_set("maxmemory", "0")
    assert _ready(live).status_code == 200
    assert _deliver(live).status_code == 202


def test_readyz_is_503_under_client_pause_write(live: str, own_redis: RedisServer) -> None:
    """CLIENT PAUSE WRITE: /readyz answers 503 within its probe timeout instead of 200; 200 after UNPAUSE."""
    assert _ready(live).status_code == 200
    db = own_redis.client()
    db.client_pause(20000, all=False)  # CLIENT PAUSE 20000 WRITE
    try:
        started = time.monotonic()
        refused = _ready(live)
        took = time.monotonic() - started
        assert refused.status_code == 503
        assert took < 3, f"/readyz took {took:.1f} s"
        assert db.ping()  # Redis itself answers: a PING-based probe would have said ready
    finally:
        db.client_unpause()
    assert _ready(live).status_code == 200
    assert _deliver(live).status_code == 202


def test_a_delivery_to_a_redis_that_stops_answering_gets_503_within_the_command_timeout(
    live: str, own_redis: RedisServer
) -> None:
    """A Redis that accepts the write but never answers (SIGSTOP): the delivery is answered 503 with
    Retry-After after the command timeout, not left hanging; 202 again once Redis runs."""
    assert _deliver(live).status_code == 202
    own_redis.freeze()
    try:
        started = time.monotonic()
        refused = _deliver(live)
        took = time.monotonic() - started
    finally:
        own_redis.thaw()
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert 4 < took < 9, f"answered after {took:.1f} s"
    assert _deliver(live).status_code == 202
