"""Each fault test gets its own stack: a redis-server it may kill (AOF, appendfsync always), a fresh gateway
emulator, and the receiver as a real process. Workers are started by the tests themselves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import receiver_process, stack_env
from tests.redis_server import RedisServer
from tests.stubserver import StubServer, start_gateway_stub


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with start_gateway_stub() as server:
        yield server


@pytest.fixture
def redis_aof(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, appendonly=True)
    with server:
        yield server


@pytest.fixture
def redis_url(redis_aof: RedisServer) -> str:
    """Here the test's database is on its own AOF server (which it may kill), so ``db``, ``redis`` and
    ``settings`` reach that one, not the suite's shared server."""
    return redis_aof.url


@pytest.fixture
def env(redis_aof: RedisServer, stub: StubServer, tmp_path: Path) -> dict[str, str]:
    return stack_env(redis_aof.url, stub.base_url, tmp_path / "artifacts")


@pytest.fixture
def receiver(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    with receiver_process(env, tmp_path / "receiver.log") as url:
        yield url
