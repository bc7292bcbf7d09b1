"""Shared fixtures: a redis-server of our own per session (flushed per test), and a live receiver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.app import create_app
from service.settings import Settings, load_settings
from tests.builders import OLD_SECRET, SECRET
from tests.redis_server import RedisServer
from tests.servers import serve_in_thread


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
