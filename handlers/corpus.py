"""The corpus store (Redis): collections of documents bound to an embedding model, and their vectors.

Keys (``service.keys``) and the fields this module keeps in them:

- ``corpus_meta(c)``, hash: ``model`` (the model the collection is bound to), ``version`` (+1 on every
  load), ``revision`` (the active revision: every document has a vector for it), ``created`` (the
  ``created`` of the deployment event that made ``revision`` active), and ``build:<revision>`` (JSON
  ``{"version", "batch_size"}`` of an embedding in progress for that revision).
- ``corpus_ids(c)`` list of ids in load order; ``corpus_docs(c)`` hash id -> text.
- ``corpus_vectors(c, rev)`` hash id -> JSON vector; ``corpus_progress(c, rev)`` batches finished.
- ``corpora_by_model(m)`` set of the collections bound to ``m``.

Decisions:

- Collection names match ``[A-Za-z0-9._-]{1,128}``, so no name can reach into another collection's keys
  (a collection called ``a:ids`` would be the id list of ``a``).
- A load validates every line before it writes anything, then writes in one MULTI/EXEC: it binds the
  collection (moving it from the set of a previous model), appends new ids, sets texts (a known id keeps
  its place and gets the new text), bumps ``version``, and marks the collection stale: ``revision`` is
  deleted with its vectors, and builds in progress are cancelled (their progress and vectors deleted).
  The next ``deployment.ready``/``updated`` of the model (or a replay of the last one) re-embeds it;
  until then ``export_corpus`` refuses. Rebinding to another model also forgets ``created``.
- A build is pinned to the corpus ``version`` and batch size it started with, so a retried job resumes
  the same batches even if the batch size setting changed. Committing a batch writes its vectors and
  advances progress in one MULTI/EXEC, as a compare-and-set (WATCH) on the version and progress; the flip
  of ``revision`` is a compare-and-set too and drops the previous revision's vectors. A build that finds
  the corpus changed under it gets ``CorpusChanged``.
- Out-of-order events: a collection whose active revision came from a *newer* deployment event
  (``created``) is not re-embedded for an older one, and a build that finishes after a newer revision
  became active is dropped instead of flipped.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError
from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.coalesce import Coalescer

__all__ = [
    "Build",
    "CorpusChanged",
    "CorpusError",
    "Document",
    "batch_texts",
    "check_collection",
    "collections_for_model",
    "commit_batch",
    "export_corpus",
    "finish_build",
    "load_corpus",
    "parse_documents",
    "split_batches",
    "start_build",
]

_COLLECTION = re.compile(r"[A-Za-z0-9._-]{1,128}")
_BUILD = "build:"
_READ_CHUNK = 500
_MAX_WATCH_RETRIES = 50

T = TypeVar("T")


class CorpusError(ValueError):
    """Bad corpus input or a collection that cannot be used as asked; ``line`` is 1-based when known."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.line = line


class CorpusChanged(Exception):
    """The collection was loaded or rebuilt while a build was running: the build must start over."""


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    text: str


@dataclass(frozen=True, slots=True)
class Build:
    """One embedding of a collection at a revision, pinned to the corpus version and batch size."""

    collection: str
    model: str
    revision: str
    version: int
    batch_size: int
    ids: tuple[str, ...]
    done: int  # batches finished before this attempt

    @property
    def batches(self) -> list[tuple[str, ...]]:
        return split_batches(self.ids, self.batch_size)

    @property
    def marker(self) -> str:
        return json.dumps({"version": self.version, "batch_size": self.batch_size}, separators=(",", ":"))


# --- pure core -------------------------------------------------------------------------------------
def split_batches(ids: Sequence[str], size: int) -> list[tuple[str, ...]]:
    """``ids`` in order, cut into slices of ``size`` (the last may be shorter)."""
    if size < 1:
        msg = f"batch size must be >= 1, got {size}"
        raise ValueError(msg)
    return [tuple(ids[i : i + size]) for i in range(0, len(ids), size)]


def parse_documents(lines: Iterable[str]) -> list[Document]:
    """JSON lines ``{"id", "text"}`` -> documents; blank lines are skipped, extra fields ignored.

    An id given twice keeps its first place and its last text. Raises ``CorpusError`` naming the line.
    """
    docs: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise CorpusError("not valid JSON", line=number) from None
        if not isinstance(obj, dict):
            raise CorpusError('expected a JSON object {"id", "text"}', line=number)
        doc_id, text = obj.get("id"), obj.get("text")
        if not isinstance(doc_id, str) or not doc_id:
            raise CorpusError('"id" must be a non-empty string', line=number)
        if not isinstance(text, str) or not text.strip():
            raise CorpusError('"text" must be a non-empty string', line=number)
        docs[doc_id] = text
    return [Document(i, t) for i, t in docs.items()]


def check_collection(name: str) -> str:
    if not _COLLECTION.fullmatch(name):
        msg = f"collection name {name!r} must match [A-Za-z0-9._-]{{1,128}}"
        raise CorpusError(msg)
    return name


def _decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _vector(raw: bytes) -> list[float]:
    value = json.loads(raw)
    if not isinstance(value, list) or not all(isinstance(x, int | float) and math.isfinite(x) for x in value):
        msg = "a stored vector is not a list of numbers"
        raise CorpusError(msg)
    return [float(x) for x in value]


async def _watched(redis: Redis, watch: Sequence[str], body: Callable[[Pipeline], Awaitable[T]]) -> T:
    """Run ``body(pipe)`` (reads after WATCH, then ``pipe.multi()`` and writes) until EXEC succeeds."""
    for _ in range(_MAX_WATCH_RETRIES):
        async with redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(*watch)
                return await body(pipe)
            except WatchError:
                continue
    msg = f"gave up after {_MAX_WATCH_RETRIES} concurrent modifications of {watch[0]}"
    raise CorpusChanged(msg)


# --- loading and reading ----------------------------------------------------------------------------
async def load_corpus(redis: Redis, lines: Iterable[str], *, collection: str, model: str) -> int:
    """Load JSON-lines documents into ``collection`` bound to ``model``; returns how many documents.

    Nothing is written when any line is bad (``CorpusError`` names it). See the module docstring for what a
    load does to the collection's embeddings.
    """
    check_collection(collection)
    if not model:
        msg = "model must be a non-empty string"
        raise CorpusError(msg)
    docs = parse_documents(lines)
    meta_key, docs_key = keys.corpus_meta(collection), keys.corpus_docs(collection)

    async def write(pipe: Pipeline) -> int:
        meta = _decode(await pipe.hgetall(meta_key))  # type: ignore[misc]
        known: set[str] = set()
        for start in range(0, len(docs), _READ_CHUNK):
            chunk = [d.id for d in docs[start : start + _READ_CHUNK]]
            present = await pipe.hmget(docs_key, chunk)  # type: ignore[misc]
            known.update(i for i, p in zip(chunk, present, strict=True) if p is not None)
        builds = [field.removeprefix(_BUILD) for field in meta if field.startswith(_BUILD)]
        old_model, old_revision = meta.get("model"), meta.get("revision")

        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.hset(meta_key, "model", model)
        pipe.hincrby(meta_key, "version", 1)
        pipe.hdel(meta_key, "revision", *(_BUILD + rev for rev in builds))
        if old_model is not None and old_model != model:
            pipe.srem(keys.corpora_by_model(old_model), collection)
            pipe.hdel(meta_key, "created")
        pipe.sadd(keys.corpora_by_model(model), collection)
        pipe.sadd(keys.CORPORA, collection)  # the console lists collections from it
        if old_revision is not None:
            pipe.delete(keys.corpus_vectors(collection, old_revision))
        for rev in builds:
            pipe.delete(keys.corpus_progress(collection, rev), keys.corpus_vectors(collection, rev))
        new_ids = [d.id for d in docs if d.id not in known]
        if new_ids:
            pipe.rpush(keys.corpus_ids(collection), *new_ids)
        if docs:
            pipe.hset(docs_key, mapping={d.id: d.text for d in docs})
        await pipe.execute()
        return len(docs)

    return await _watched(redis, [meta_key, docs_key], write)


async def collections_for_model(redis: Redis, model: str, *, via: Coalescer | None = None) -> list[str]:
    """Names of the collections bound to ``model``, sorted. ``via``: in the round trip other jobs share."""
    key = keys.corpora_by_model(model)
    members = await (via.command("SMEMBERS", key) if via is not None else redis.smembers(key))  # type: ignore[misc]
    return sorted(m.decode() for m in members)


async def export_corpus(redis: Redis, collection: str) -> AsyncIterator[dict[str, Any]]:
    """``{"id", "model", "revision", "embedding"}`` per document in load order, for the active revision.

    Raises ``CorpusError`` when the collection does not exist, has no embedded revision yet, or changes
    (a load or a new revision) while being exported.
    """
    check_collection(collection)
    meta = _decode(await redis.hgetall(keys.corpus_meta(collection)))  # type: ignore[misc]
    if not meta:
        msg = f"collection {collection!r} does not exist"
        raise CorpusError(msg)
    revision, model = meta.get("revision"), meta["model"]
    if revision is None:
        msg = f"collection {collection!r} has no embedded revision yet (it is re-embedded on the next deployment)"
        raise CorpusError(msg)
    ids_key, vectors_key, start = keys.corpus_ids(collection), keys.corpus_vectors(collection, revision), 0
    while True:
        ids = [i.decode() for i in await redis.lrange(ids_key, start, start + _READ_CHUNK - 1)]  # type: ignore[misc]
        if not ids:
            return
        raw = await redis.hmget(vectors_key, ids)  # type: ignore[misc]
        for doc_id, vector in zip(ids, raw, strict=True):
            if vector is None:
                msg = f"collection {collection!r} changed during the export; export again"
                raise CorpusError(msg)
            yield {"id": doc_id, "model": model, "revision": revision, "embedding": _vector(vector)}
        start += len(ids)


# --- builds (used by handlers.embeddings) -----------------------------------------------------------
async def start_build(
    redis: Redis, collection: str, *, model: str, revision: str, created: int, batch_size: int
) -> Build | None:
    """Start or resume embedding ``collection`` at ``revision``; None when there is nothing to do.

    Nothing to do: the collection is gone or bound to another model, already active at ``revision``, or
    its active revision came from a deployment event newer than ``created``.
    """
    meta_key = keys.corpus_meta(collection)
    progress_key = keys.corpus_progress(collection, revision)

    async def begin(pipe: Pipeline) -> Build | None:
        meta = _decode(await pipe.hgetall(meta_key))  # type: ignore[misc]
        if meta.get("model") != model or meta.get("revision") == revision:
            return None
        if int(meta.get("created", -1)) > created:
            return None
        version = int(meta.get("version", 0))
        pinned = json.loads(meta.get(_BUILD + revision, "null"))
        resume = isinstance(pinned, dict) and pinned.get("version") == version
        size = int(pinned["batch_size"]) if resume else batch_size
        ids = tuple(i.decode() for i in await pipe.lrange(keys.corpus_ids(collection), 0, -1))  # type: ignore[misc]
        done = int(await pipe.get(progress_key) or 0) if resume else 0
        build = Build(collection, model, revision, version, size, ids, done)
        pipe.multi()  # type: ignore[no-untyped-call]
        if not resume:
            pipe.delete(progress_key, keys.corpus_vectors(collection, revision))
        pipe.hset(meta_key, _BUILD + revision, build.marker)
        await pipe.execute()
        return build

    return await _watched(redis, [meta_key], begin)


async def batch_texts(redis: Redis, build: Build, index: int) -> list[str]:
    """The texts of batch ``index``, in order."""
    ids = build.batches[index]
    texts = await redis.hmget(keys.corpus_docs(build.collection), list(ids))  # type: ignore[misc]
    if any(t is None for t in texts):
        msg = f"documents of {build.collection!r} disappeared during the build"
        raise CorpusChanged(msg)
    return [t.decode() for t in texts if t is not None]


async def _check_build(pipe: Pipeline, build: Build) -> bool:
    """False when the build's revision is already active; CorpusChanged when the build was superseded."""
    version, marker, active = await pipe.hmget(  # type: ignore[misc]
        keys.corpus_meta(build.collection), ["version", _BUILD + build.revision, "revision"]
    )
    if active is not None and active.decode() == build.revision:
        return False
    if version is None or int(version) != build.version or marker is None or marker.decode() != build.marker:
        msg = f"collection {build.collection!r} was loaded or rebuilt during the build of {build.revision!r}"
        raise CorpusChanged(msg)
    return True


async def commit_batch(redis: Redis, build: Build, index: int, vectors: Sequence[Sequence[float]]) -> bool:
    """Store batch ``index``'s vectors and advance progress in one MULTI/EXEC; False if already stored."""
    ids = build.batches[index]
    if len(vectors) != len(ids):
        msg = f"batch {index} has {len(ids)} documents but {len(vectors)} vectors"
        raise ValueError(msg)
    meta_key = keys.corpus_meta(build.collection)
    progress_key = keys.corpus_progress(build.collection, build.revision)

    async def commit(pipe: Pipeline) -> bool:
        if not await _check_build(pipe, build):
            return False
        done = int(await pipe.get(progress_key) or 0)
        if done > index:
            return False
        if done < index:
            msg = f"progress of {build.collection!r}@{build.revision!r} is {done}, expected {index}"
            raise CorpusChanged(msg)
        pipe.multi()  # type: ignore[no-untyped-call]
        mapping = {i: json.dumps(list(v), separators=(",", ":")) for i, v in zip(ids, vectors, strict=True)}
        pipe.hset(keys.corpus_vectors(build.collection, build.revision), mapping=mapping)
        pipe.set(progress_key, index + 1)
        await pipe.execute()
        return True

    return await _watched(redis, [meta_key, progress_key], commit)


async def finish_build(redis: Redis, build: Build, *, created: int) -> bool:
    """Make ``build.revision`` the active one once every batch is in; False if it did not flip.

    It does not flip when the revision is already active, or when a newer deployment event's revision
    became active meanwhile (the build's vectors are then dropped).
    """
    meta_key = keys.corpus_meta(build.collection)
    progress_key = keys.corpus_progress(build.collection, build.revision)
    vectors_key = keys.corpus_vectors(build.collection, build.revision)

    async def flip(pipe: Pipeline) -> bool:
        if not await _check_build(pipe, build):
            return False
        done = int(await pipe.get(progress_key) or 0)
        if done != len(build.batches):
            msg = f"build of {build.collection!r}@{build.revision!r} has {done} of {len(build.batches)} batches"
            raise CorpusChanged(msg)
        old_revision, old_created = await pipe.hmget(meta_key, ["revision", "created"])  # type: ignore[misc]
        superseded = old_created is not None and int(old_created) > created
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.hdel(meta_key, _BUILD + build.revision)
        pipe.delete(progress_key)
        if superseded:
            pipe.delete(vectors_key)
        else:
            pipe.hset(meta_key, mapping={"revision": build.revision, "created": created})
            if old_revision is not None and old_revision.decode() != build.revision:
                pipe.delete(keys.corpus_vectors(build.collection, old_revision.decode()))
        await pipe.execute()
        return not superseded

    return await _watched(redis, [meta_key, progress_key], flip)
