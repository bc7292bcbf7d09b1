"""Vectors in Qdrant through qdrant-client: a server or cluster (``qdrant+http(s)://``) or the embedded
local mode on disk (``qdrant+path:///dir``), by the same code.

One Qdrant collection per corpus collection and revision, named ``<collection>@<revision>@v<version>``
(the corpus version it was built from, see ``base``), and an alias ``<collection>`` that the flip points
at the active one. A build writes into a collection nothing reads yet; the flip is one alias change
(Qdrant applies the delete and create of an alias in one request), so anything querying Qdrant by the
alias — the team's own search service as much as ``corpus search`` — moves from the old index to the new
one at once, and the old collection is dropped whole, which is cheaper than deleting its points. Corpus
collection names never contain ``@``, so ``<collection>@`` prefixes only that collection's slots. A
revision outside ``[A-Za-z0-9._-]{1,100}`` is named by a hash of it (Qdrant refuses some characters).

Points: id = a UUID derived from the document id (Qdrant takes only UUIDs or integers, and a derived
one makes a rewritten batch overwrite itself); payload ``document_id``, ``model``, ``revision``, and
``norm``. Cosine collections store unit vectors, so the norm is kept to give export the vector as the
gateway returned it.

Embedded mode locks its directory to one process. Inside a process every opener shares one client
(counted; the last close releases the lock); another process waits up to ``lock_wait`` seconds for the
lock, then gets ``VectorStoreBusy``. Workers open the store per build, so the CLI can search between
builds; several workers, or searching during builds, need a Qdrant server. Embedded mode also keeps
every collection in memory and searches by brute force: it is for one machine and small corpora.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
import uuid
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from runinfra_webhooks.service.storage.vectors.base import (
    Hit,
    Slot,
    VectorStoreBusy,
    VectorStoreError,
    VectorStoreUnavailable,
    check_vectors,
)

try:
    from qdrant_client import AsyncQdrantClient, models
except ImportError:  # pragma: no cover - the optional extra is installed in tests
    AsyncQdrantClient = None  # type: ignore[assignment,misc]
    models = None  # type: ignore[assignment]

__all__ = ["QdrantVectorStore", "collection_name", "point_id"]

_SAFE_REVISION = re.compile(r"[A-Za-z0-9._-]{1,100}")
_ID_NAMESPACE = uuid.UUID("5f0c8a52-8f44-4a3c-9d56-6f3e2f1f7a10")
_RETRIEVE_CHUNK = 512
_LOCK_RETRY = 0.1
_LOCKED = "already accessed by another instance"


def collection_name(slot: Slot) -> str:
    revision = slot.revision
    if not _SAFE_REVISION.fullmatch(revision):
        revision = "h" + hashlib.sha256(revision.encode()).hexdigest()[:32]
    return f"{slot.collection}@{revision}@v{slot.version}"


def point_id(document_id: str) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, document_id))


def _lock_free(path: str) -> bool:
    """Whether no process holds the embedded-mode lock of ``path`` (the lock qdrant-client itself takes)."""
    import portalocker

    lock = Path(path) / ".lock"
    if not lock.exists():
        return True
    with lock.open("r+") as handle:
        try:
            portalocker.lock(handle, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        except portalocker.exceptions.LockException:
            return False
        portalocker.unlock(handle)
        return True


class _SharedLocal:
    """One embedded client per directory in this process, counted by its openers.

    No lock is needed: between two awaits a coroutine runs alone, and nothing here awaits between reading
    and updating ``clients``.
    """

    clients: dict[str, tuple[Any, int]] = {}  # noqa: RUF012 - process-wide by design: one lock per directory

    @classmethod
    async def acquire(cls, path: str, lock_wait: float) -> Any:
        deadline = time.monotonic() + lock_wait
        while True:
            if path in cls.clients:
                client, users = cls.clients[path]
                cls.clients[path] = (client, users + 1)
                return client
            try:
                # Probe first: a client that fails on the lock leaves its files open.
                if not _lock_free(path):
                    raise RuntimeError(_LOCKED)
                client = AsyncQdrantClient(path=path)
            except RuntimeError as exc:
                if _LOCKED not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    msg = (f"the Qdrant directory {path} is in use by another process: embedded mode serves one "
                           "process at a time (use a Qdrant server, qdrant+http://, for several processes)")
                    raise VectorStoreBusy(msg) from None
                await asyncio.sleep(_LOCK_RETRY)
                continue
            cls.clients[path] = (client, 1)
            return client

    @classmethod
    async def release(cls, path: str) -> None:
        client, users = cls.clients[path]
        if users > 1:
            cls.clients[path] = (client, users - 1)
            return
        del cls.clients[path]
        await client.close()


class QdrantVectorStore:
    kind = "qdrant"

    def __init__(self, client: Any, *, local_path: str | None = None) -> None:
        self._client = client
        self._local_path = local_path
        self._known: set[str] = set()  # Qdrant collections this store has seen exist

    @classmethod
    async def open(cls, kind: str, location: str, *, api_key: str | None = None, lock_wait: float = 10.0,
                   timeout: float = 30.0) -> QdrantVectorStore:
        if AsyncQdrantClient is None:
            msg = ("RUNINFRA_VECTOR_STORE names Qdrant but qdrant-client is not installed: "
                   "pip install 'runinfra-webhooks[qdrant]'")
            raise VectorStoreUnavailable(msg)
        if kind == "qdrant-path":
            return cls(await _SharedLocal.acquire(location, lock_wait), local_path=location)
        return cls(AsyncQdrantClient(url=location, api_key=api_key, timeout=math.ceil(timeout)))

    async def aclose(self) -> None:
        if self._local_path is not None:
            path, self._local_path = self._local_path, None
            await _SharedLocal.release(path)
        else:
            await self._client.close()

    async def _exists(self, name: str) -> bool:
        if name in self._known:
            return True
        exists = bool(await self._client.collection_exists(name))
        if exists:
            self._known.add(name)
        return exists

    async def _ensure(self, name: str, dims: int) -> None:
        if await self._exists(name):
            return
        try:
            await self._client.create_collection(
                name, vectors_config=models.VectorParams(size=dims, distance=models.Distance.COSINE)
            )
        except Exception:
            if not await self._exists(name):  # another worker creating it at the same time is fine
                raise
        self._known.add(name)

    async def write(self, slot: Slot, *, model: str, ids: Sequence[str], vectors: Sequence[Sequence[float]]) -> None:
        dims = check_vectors(ids, vectors)
        if not ids:
            return
        name = collection_name(slot)
        await self._ensure(name, dims)
        points = [
            models.PointStruct(
                id=point_id(doc_id),
                vector=[float(x) for x in vector],
                payload={"document_id": doc_id, "model": model, "revision": slot.revision,
                         "norm": math.sqrt(math.fsum(x * x for x in vector))},
            )
            for doc_id, vector in zip(ids, vectors, strict=True)
        ]
        try:
            await self._client.upsert(name, points=points, wait=True)
        except Exception as exc:
            msg = f"Qdrant refused a batch of {name!r}: {type(exc).__name__}: {exc}"
            raise VectorStoreError(msg) from exc

    async def count(self, slot: Slot) -> int:
        name = collection_name(slot)
        if not await self._exists(name):
            return 0
        return int((await self._client.count(name, exact=True)).count)

    async def activate(self, slot: Slot) -> None:
        name, collection = collection_name(slot), slot.collection
        operations: list[Any] = []
        aliases = (await self._client.get_aliases()).aliases
        current = next((a.collection_name for a in aliases if a.alias_name == collection), None)
        if current == name:
            return
        if current is not None:
            operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=collection)))
        if await self._exists(name):  # an empty corpus has no vectors and so no collection to point at
            operations.append(models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=name, alias_name=collection)))
        if operations:
            await self._client.update_collection_aliases(change_aliases_operations=operations)

    async def search(self, slot: Slot, vector: Sequence[float], k: int) -> list[Hit]:
        if k < 1:
            msg = f"k must be >= 1, got {k}"
            raise ValueError(msg)
        name = collection_name(slot)
        if not await self._exists(name):
            return []
        try:
            response = await self._client.query_points(
                name, query=[float(x) for x in vector], limit=k, with_payload=["document_id"]
            )
        except Exception as exc:
            msg = f"Qdrant refused the search of {name!r}: {type(exc).__name__}: {exc}"
            raise VectorStoreError(msg) from exc
        return [Hit(str(p.payload["document_id"]), float(p.score)) for p in response.points]

    async def vectors(self, slot: Slot, ids: Sequence[str]) -> list[list[float] | None]:
        name = collection_name(slot)
        if not ids or not await self._exists(name):
            return [None] * len(ids)
        found: dict[str, list[float]] = {}
        for start in range(0, len(ids), _RETRIEVE_CHUNK):
            chunk = [point_id(i) for i in ids[start : start + _RETRIEVE_CHUNK]]
            records = await self._client.retrieve(name, ids=chunk, with_payload=["document_id", "norm"],
                                                  with_vectors=True)
            for record in records:
                norm = float(record.payload.get("norm", 1.0))
                found[str(record.payload["document_id"])] = [float(x) * norm for x in record.vector]
        return [found.get(i) for i in ids]

    async def drop(self, slot: Slot) -> None:
        name = collection_name(slot)
        self._known.discard(name)
        if await self._client.collection_exists(name):
            await self._client.delete_collection(name)

    async def prune(self, collection: str, keep: Collection[Slot]) -> None:
        kept = {collection_name(s) for s in keep}
        for described in (await self._client.get_collections()).collections:
            name = described.name
            if name.startswith(f"{collection}@") and name not in kept:
                self._known.discard(name)
                await self._client.delete_collection(name)
