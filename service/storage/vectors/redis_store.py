"""The default vector store: the service's own Redis, each vector packed as little-endian float32.

Keys (``storage.keys``): ``corpus_vectors(c, rev, version)`` hash document id -> ``4 * dims`` bytes, and
``corpus_vector_slots(c)`` the set of ``<version>:<revision>`` that have such a hash (so ``prune`` needs
no SCAN).
A batch is one HSET plus one SADD in a MULTI/EXEC. Model and revision are not repeated per vector: the
revision names the hash, and the collection's model is in its corpus record.

The active revision is the corpus record's ``revision`` field, flipped by the corpus store in its own
compare-and-set; this store has no pointer of its own, so ``activate`` does nothing.

Search is an exact scan: HSCAN in chunks, cosine similarity with numpy, a running top ``k``. It reads every
vector of the revision per query (about ``4 * dims`` bytes each), so it suits collections up to roughly
100,000 vectors at 1,024 dimensions (see the README); beyond that, use Qdrant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence

import numpy as np
import numpy.typing as npt
from redis.asyncio import Redis

from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.vectors.base import Hit, Slot, VectorStoreError, check_vectors

__all__ = ["RedisVectorStore", "pack", "unpack"]

_DTYPE = np.dtype("<f4")
_SCAN_COUNT = 1_000


def pack(vector: Sequence[float]) -> bytes:
    return np.asarray(vector, dtype=_DTYPE).tobytes()


def unpack(raw: bytes) -> list[float]:
    if len(raw) % _DTYPE.itemsize:
        msg = f"a stored vector has {len(raw)} bytes, not a whole number of float32"
        raise VectorStoreError(msg)
    values: list[float] = np.frombuffer(raw, dtype=_DTYPE).astype(float).tolist()
    return values


class RedisVectorStore:
    kind = "redis"

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def write(self, slot: Slot, *, model: str, ids: Sequence[str], vectors: Sequence[Sequence[float]]) -> None:
        check_vectors(ids, vectors)
        if not ids:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(_key(slot), mapping={i: pack(v) for i, v in zip(ids, vectors, strict=True)})
            pipe.sadd(keys.corpus_vector_slots(slot.collection), _member(slot))
            await pipe.execute()

    async def count(self, slot: Slot) -> int:
        return int(await self._redis.hlen(_key(slot)))  # type: ignore[misc]

    async def activate(self, slot: Slot) -> None:
        return None

    async def search(self, slot: Slot, vector: Sequence[float], k: int) -> list[Hit]:
        if k < 1:
            msg = f"k must be >= 1, got {k}"
            raise ValueError(msg)
        query = _unit(np.asarray(vector, dtype=np.float64))
        best_ids: list[str] = []
        best_scores: npt.NDArray[np.float64] = np.empty(0)
        async for chunk in _chunks(self._redis, _key(slot)):
            ids = [i.decode() for i in chunk]
            matrix = np.frombuffer(b"".join(chunk.values()), dtype=_DTYPE).reshape(len(chunk), -1)
            if matrix.shape[1] != query.shape[0]:
                msg = f"the query has {query.shape[0]} dimensions, the collection's vectors {matrix.shape[1]}"
                raise VectorStoreError(msg)
            norms = np.linalg.norm(matrix, axis=1)
            scores = (matrix @ query) / np.where(norms == 0, 1.0, norms)
            if len(ids) > k:  # only a chunk's own k best can make the running top k
                keep = np.argpartition(-scores, k)[:k]
                ids, scores = [ids[j] for j in keep.tolist()], scores[keep]
            best_ids, best_scores = _top(best_ids + ids, np.concatenate([best_scores, scores]), k)
        return [Hit(i, float(s)) for i, s in zip(best_ids, best_scores, strict=True)]

    async def vectors(self, slot: Slot, ids: Sequence[str]) -> list[list[float] | None]:
        if not ids:
            return []
        raw = await self._redis.hmget(_key(slot), list(ids))  # type: ignore[misc]
        return [None if r is None else unpack(r) for r in raw]

    async def drop(self, slot: Slot) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(_key(slot))
            pipe.srem(keys.corpus_vector_slots(slot.collection), _member(slot))
            await pipe.execute()

    async def prune(self, collection: str, keep: Collection[Slot]) -> None:
        kept = {_member(s) for s in keep if s.collection == collection}
        stored = await self._redis.smembers(keys.corpus_vector_slots(collection))  # type: ignore[misc]
        for member in sorted(m.decode() for m in stored):
            if member not in kept:
                version, _, revision = member.partition(":")
                await self.drop(Slot(collection, revision, int(version)))

    async def aclose(self) -> None:
        return None  # the Redis client belongs to the caller


def _key(slot: Slot) -> str:
    return keys.corpus_vectors(slot.collection, slot.revision, slot.version)


def _member(slot: Slot) -> str:
    return f"{slot.version}:{slot.revision}"  # the version has no colon, so the revision is the rest


async def _chunks(redis: Redis, key: str) -> AsyncIterator[dict[bytes, bytes]]:
    """HSCAN ``key`` in chunks of about ``_SCAN_COUNT`` fields (a field may come twice; the caller dedups)."""
    cursor = 0
    while True:
        cursor, chunk = await redis.hscan(key, cursor, count=_SCAN_COUNT)
        if chunk:
            yield chunk
        if cursor == 0:
            return


def _unit(vector: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    norm = float(np.linalg.norm(vector))
    if vector.ndim != 1 or not vector.size or not np.isfinite(norm) or norm == 0:
        msg = "the query vector must be a non-empty, non-zero list of finite numbers"
        raise VectorStoreError(msg)
    return vector / norm


def _top(ids: list[str], scores: npt.NDArray[np.float64], k: int) -> tuple[list[str], npt.NDArray[np.float64]]:
    """The ``k`` best (id, score), best first; an id seen twice (HSCAN may repeat one) counts once."""
    seen: dict[str, float] = {}
    for i, s in zip(ids, scores.tolist(), strict=True):
        seen[i] = s
    ranked = sorted(seen.items(), key=lambda item: (-item[1], item[0]))[:k]
    return [i for i, _ in ranked], np.asarray([s for _, s in ranked], dtype=np.float64)
