"""The vector store of re-embedding: one small interface, and what every implementation shares.

A store keeps vectors in *slots*: one per corpus collection, model revision and corpus version (the load
the vectors were built from), one vector per document id with the ``model`` and ``revision`` it came
from. It knows nothing of the corpus bookkeeping (documents, build progress, which revision is active):
the corpus store in Redis is the one source of truth for that, and tells the vector store which slot to
read, to point its active name at, or to drop.

The version is part of the slot because a vector store is not in Redis's transactions: a build cut short
by a load may still write one late batch, and that batch must land where the next build never reads.
Every write is an idempotent upsert by document id, so a batch written twice (a retried job) leaves the
same vectors; ``count`` lets a build check that every vector arrived before the flip.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Hit",
    "Slot",
    "VectorStore",
    "VectorStoreBusy",
    "VectorStoreError",
    "VectorStoreUnavailable",
    "check_vectors",
]


class VectorStoreError(Exception):
    """The vector store refused or failed an operation; ``code`` names the kind for logs and problems."""

    code = "vector_store_error"


class VectorStoreBusy(VectorStoreError):
    """Qdrant's embedded mode serves one process at a time, and another process holds the directory."""

    code = "vector_store_busy"


class VectorStoreUnavailable(VectorStoreError):
    """The configured store cannot be used here (its client library is not installed)."""

    code = "vector_store_unavailable"


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: a document id and its cosine similarity to the query (1.0 is the same direction)."""

    id: str
    score: float


@dataclass(frozen=True, slots=True)
class Slot:
    """Where one build's vectors go: ``collection`` at ``revision``, built from corpus ``version``."""

    collection: str
    revision: str
    version: int


def check_vectors(ids: Sequence[str], vectors: Sequence[Sequence[float]]) -> int:
    """The common dimension of one batch; ValueError when counts, dimensions or values are unusable."""
    if len(ids) != len(vectors):
        msg = f"{len(ids)} ids but {len(vectors)} vectors"
        raise ValueError(msg)
    dims = {len(v) for v in vectors}
    if len(dims) > 1 or 0 in dims:
        msg = f"vectors of one batch must share one non-zero dimension, got {sorted(dims)}"
        raise ValueError(msg)
    if any(not math.isfinite(x) for v in vectors for x in v):
        msg = "vectors must hold finite numbers"
        raise ValueError(msg)
    return dims.pop() if dims else 0


class VectorStore(Protocol):
    """Where re-embedded vectors live. Collection names match ``[A-Za-z0-9._-]{1,128}``."""

    kind: str  # "redis" or "qdrant", for logs and the console

    async def write(self, slot: Slot, *, model: str, ids: Sequence[str], vectors: Sequence[Sequence[float]]) -> None:
        """Upsert one batch of vectors into ``slot`` (durable when it returns)."""

    async def count(self, slot: Slot) -> int:
        """How many vectors ``slot`` holds (0 when none were written)."""

    async def activate(self, slot: Slot) -> None:
        """Point the store's own name for the collection's active vectors at ``slot`` (idempotent)."""

    async def search(self, slot: Slot, vector: Sequence[float], k: int) -> list[Hit]:
        """The ``k`` vectors of ``slot`` nearest ``vector`` by cosine similarity, nearest first."""

    async def vectors(self, slot: Slot, ids: Sequence[str]) -> list[list[float] | None]:
        """The stored vectors of ``ids``, in that order (None for an id without one)."""

    async def drop(self, slot: Slot) -> None:
        """Forget every vector of ``slot`` (idempotent)."""

    async def prune(self, collection: str, keep: Collection[Slot]) -> None:
        """Drop every slot of ``collection`` not in ``keep`` (leftovers of crashed, cancelled or replaced builds)."""

    async def aclose(self) -> None:
        """Release connections and, for Qdrant's embedded mode, the directory lock."""
