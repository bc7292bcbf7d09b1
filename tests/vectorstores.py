"""Both vector stores for tests: ``redis`` on the test's Redis, ``qdrant`` in embedded mode in tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from runinfra_webhooks.service.storage.vectors import VectorStore, open_vector_store

STORES = ("redis", "qdrant")


def store_url(kind: str, tmp_path: Path) -> str:
    """The RUNINFRA_VECTOR_STORE value of ``kind`` for one test."""
    return "redis" if kind == "redis" else f"qdrant+path://{tmp_path / 'qdrant'}"


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def store(store_kind: str, redis: Redis, tmp_path: Path) -> AsyncIterator[VectorStore]:
    """An open vector store of each kind (the test runs once per kind)."""
    async with open_vector_store(store_url(store_kind, tmp_path), redis) as opened:
        yield opened
