"""Shared fixtures: a redis-server of our own per session (flushed per test), and a live receiver."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
import structlog
from redis.asyncio import Redis

from runinfra_webhooks.service.core import signature
from runinfra_webhooks.service.receiver.app import create_app
from runinfra_webhooks.service.settings import Settings, load_settings
from runinfra_webhooks.service.storage.vectors import VectorStore, open_vector_store
from tests.builders import OLD_SECRET, SECRET
from tests.leakwatch import LeakWatch, ScanHandler
from tests.redis_server import Db, RedisServer, as_db
from tests.servers import serve_in_thread
from tests.stubserver import STUB_API_KEY, StubServer, start_gateway_stub
from tests.vectorstores import STORES, store_url


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean database on a server this test session started itself (so flushing it is ours to do)."""
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for this test alone, which it may stop, kill and restart."""
    with RedisServer(tmp_path) as server:
        yield server


def make_settings(redis_url: str, tmp_path: Path, **overrides: object) -> Settings:
    env: dict[str, object] = {
        "RUNINFRA_WEBHOOK_SECRET": f"{SECRET},{OLD_SECRET}",
        "REDIS_URL": redis_url,
        "RUNINFRA_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
    }
    env.update(overrides)
    return load_settings(**env)


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(redis_url, tmp_path)


@pytest.fixture
def receiver_url(settings: Settings) -> Iterator[str]:
    with serve_in_thread(create_app(settings)) as url:
        yield url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """An asyncio client of the test's clean database."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def db(redis_url: str) -> Iterator[Db]:
    """A synchronous client of the test's clean database, to read (or damage) what the code under test wrote."""
    client = sync_redis.Redis.from_url(redis_url)
    yield as_db(client)
    client.close()


@pytest.fixture(scope="module")
def stub_server() -> Iterator[StubServer]:
    """The gateway emulator over real HTTP, one per test module."""
    with start_gateway_stub() as server:
        yield server


@pytest.fixture
def stub(stub_server: StubServer) -> StubServer:
    """The module's gateway emulator with no calls, charges or faults left from earlier tests."""
    stub_server.reset()
    return stub_server


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Each vector store in turn: a test asking for it (or for ``store``) runs once per kind."""
    kind: str = request.param
    return kind


@pytest.fixture
async def store(store_kind: str, redis: Redis, tmp_path: Path) -> AsyncIterator[VectorStore]:
    """An open vector store of each kind: the test's Redis, or Qdrant's embedded mode in tmp_path."""
    async with open_vector_store(store_url(store_kind, tmp_path), redis) as opened:
        yield opened


# No secret, API key or signature in any log line, for the whole suite (see tests/leakwatch.py).

@pytest.fixture(scope="session")
def leak_watch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LeakWatch]:
    watch = LeakWatch((SECRET, OLD_SECRET, STUB_API_KEY))
    real_hex_hmac = signature._hex_hmac

    def recording_hex_hmac(key: bytes, payload: bytes) -> bytes:
        digest = real_hex_hmac(key, payload)
        watch.signatures.add(digest.decode("ascii"))
        return digest

    def scan_event(logger: object, method: str, event_dict: Any) -> Any:
        watch.scan(repr(event_dict), f"structlog {event_dict.get('event')!r}")
        return event_dict

    signature._hex_hmac = recording_hex_hmac
    processors = structlog.get_config()["processors"]
    processors.insert(0, scan_event)  # in place: bound loggers keep a reference to this list
    structlog.configure(processors=processors)
    handler = ScanHandler(watch)
    logging.getLogger().addHandler(handler)
    try:
        yield watch
    finally:
        logging.getLogger().removeHandler(handler)
        if scan_event in processors:
            processors.remove(scan_event)
            structlog.configure(processors=processors)
        signature._hex_hmac = real_hex_hmac
    watch.scan_files(tmp_path_factory.getbasetemp())
    leaks = watch.take()
    if leaks:
        pytest.fail("secrets or signatures leaked into logs after the last test:\n" + "\n".join(sorted(set(leaks))))


@pytest.fixture(autouse=True)
def _no_secrets_in_logs(leak_watch: LeakWatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    leak_watch.scan_files(tmp_path_factory.getbasetemp())
    leaks = leak_watch.take()
    if leaks:
        pytest.fail("secrets or signatures leaked into logs:\n" + "\n".join(sorted(set(leaks))), pytrace=False)
