"""Where re-embedded vectors live: ``open_vector_store`` picks the store ``RUNINFRA_VECTOR_STORE`` names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from runinfra_webhooks.service.storage.vectors.base import (
    Hit,
    Slot,
    VectorStore,
    VectorStoreBusy,
    VectorStoreError,
    VectorStoreUnavailable,
)
from runinfra_webhooks.service.storage.vectors.redis_store import RedisVectorStore
from runinfra_webhooks.service.storage.vectors.url import StoreUrl, parse_store_url

__all__ = [
    "Hit",
    "Slot",
    "StoreUrl",
    "VectorStore",
    "VectorStoreBusy",
    "VectorStoreError",
    "VectorStoreUnavailable",
    "open_vector_store",
    "parse_store_url",
]


@asynccontextmanager
async def open_vector_store(
    url: str, redis: Redis, *, qdrant_api_key: str | None = None, lock_wait: float = 10.0, timeout: float = 30.0
) -> AsyncIterator[VectorStore]:
    """The store for ``url`` (a ``RUNINFRA_VECTOR_STORE`` value), closed when the block ends.

    ``redis`` is the service's client, used by the ``redis`` store and left open. For Qdrant's embedded
    mode the block holds the directory lock (shared with other blocks of this process).
    """
    parsed = parse_store_url(url)
    store: VectorStore
    if parsed.kind == "redis":
        store = RedisVectorStore(redis)
    else:
        from runinfra_webhooks.service.storage.vectors.qdrant_store import QdrantVectorStore

        store = await QdrantVectorStore.open(parsed.kind, parsed.location, api_key=qdrant_api_key,
                                             lock_wait=lock_wait, timeout=timeout)
    try:
        yield store
    finally:
        await store.aclose()
