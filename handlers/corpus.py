"""The corpus store (Redis): collections of documents bound to an embedding model, and their builds.

The vectors themselves live in a vector store (``service.storage.vectors``: Redis or Qdrant), in the
slot of the collection, revision and corpus version they were built from; this module is the one source
of truth for which slot is active and how far a build got.

Keys (``service.keys``) and the fields this module keeps in them:

- ``corpus_meta(c)``, hash: ``model`` (the model the collection is bound to), ``version`` (+1 on every
  load), ``revision`` (the active revision: every document has a vector for it, in the slot of
  ``revision`` and ``version``), ``created`` (the ``created`` of the deployment event that made
  ``revision`` active), and ``build:<revision>`` (JSON ``{"version", "batch_size"}`` of an embedding in
  progress for that revision).
- ``corpus_ids(c)`` list of ids in load order; ``corpus_docs(c)`` hash id -> text.
- ``corpus_progress(c, rev)`` a bitmap of the batches finished (bit ``i`` set once batch ``i`` is stored),
  so batches may finish in any order and a retry runs exactly the missing ones.
- ``corpora_by_model(m)`` set of the collections bound to ``m``.
- ``corpus_claims(c, rev)`` the leases of jobs sharing that build (``batch_claims``): deleted with the
  progress bitmap, by a load, a restart and the flip.

Decisions:

- Collection names match ``[A-Za-z0-9._-]{1,128}``, so no name can reach into another collection's keys
  (a collection called ``a:ids`` would be the id list of ``a``).
- A load validates every line before it writes anything, then writes in one MULTI/EXEC: it binds the
  collection (moving it from the set of a previous model), appends new ids, sets texts (a known id keeps
  its place and gets the new text), bumps ``version``, and marks the collection stale: ``revision`` is
  deleted, and builds in progress are cancelled (their progress deleted). Their vectors are in slots of
  the old version, which nothing reads again; ``VectorStore.prune`` drops them (the CLI's load does, and
  every flip). The next ``deployment.ready``/``updated`` of the model (or a replay of the last one)
  re-embeds it; until then ``export_corpus`` refuses. Rebinding to another model also forgets ``created``.
- A build is pinned to the corpus ``version`` and batch size it started with, so a retried job resumes
  the same batches even if the batch size setting changed. Its ids are read and cut into batches once per
  attempt (``Build.cut``); nothing per batch touches more than that batch's ids, so a build's time grows
  linearly with the corpus. A batch's vectors are written to the store (an idempotent upsert), then
  ``commit_batch`` sets its bit, guarded by a compare-and-set (WATCH) on the corpus record; a crash
  between the two rewrites the same vectors on retry. The flip of ``revision`` is a compare-and-set too,
  and only happens once the store holds one vector per document. A build that finds the corpus changed
  under it gets ``CorpusChanged``.
- Out-of-order events: a collection whose active revision came from a *newer* deployment event
  (``created``) is not re-embedded for an older one, and a build that finishes after a newer revision
  became active is dropped instead of flipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.batch_claims import ALL_DONE, CHANGED, HELD, BatchClaims
from runinfra_webhooks.service.storage.coalesce import Coalescer
from runinfra_webhooks.service.storage.vectors import Hit, Slot, VectorStore

__all__ = [
    "Build",
    "CollectionState",
    "CorpusChanged",
    "CorpusError",
    "Document",
    "Flip",
    "active_slot",
    "batch_texts",
    "check_collection",
    "claim_batch",
    "collection_names",
    "collection_state",
    "collections_for_model",
    "commit_batch",
    "complete_build",
    "done_batches",
    "export_corpus",
    "finish_build",
    "join_build",
    "live_slots",
    "load_corpus",
    "parse_documents",
    "release_batches",
    "restart_build",
    "search_corpus",
    "split_batches",
    "start_build",
    "store_batch",
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
class Flip:
    """What ``finish_build`` did: ``flipped`` when the build's revision became active; ``superseded`` when a
    newer deployment event's revision was active already (the build's vectors are then to be dropped)."""

    flipped: bool
    superseded: bool


@dataclass(frozen=True, slots=True)
class CollectionState:
    """One collection as an operator sees it: bound model, active revision, and builds in progress."""

    name: str
    model: str
    version: int
    revision: str | None
    documents: int
    builds: dict[str, dict[str, int]]  # revision -> {"version", "batch_size", "batches_done", "batches"}


@dataclass(frozen=True, slots=True)
class Build:
    """One embedding of a collection at a revision, pinned to the corpus version and batch size.

    ``batches`` are cut once, when the build is made (``Build.cut``): a batch is then a lookup.
    """

    collection: str
    model: str
    revision: str
    version: int
    batch_size: int
    batches: tuple[tuple[str, ...], ...]
    done: frozenset[int]  # batches finished before this attempt
    documents: int

    @classmethod
    def cut(cls, collection: str, model: str, revision: str, version: int, batch_size: int, ids: Sequence[str],
            done: frozenset[int] = frozenset()) -> Build:
        return cls(collection, model, revision, version, batch_size, tuple(split_batches(ids, batch_size)), done,
                   len(ids))

    @property
    def pending(self) -> list[int]:
        """The batches still to do, in order."""
        return [i for i in range(len(self.batches)) if i not in self.done]

    @property
    def slot(self) -> Slot:
        return Slot(self.collection, self.revision, self.version)

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


def _bits(raw: bytes | None) -> frozenset[int]:
    """The set bits of a Redis bitmap (bit 0 is the high bit of byte 0, as SETBIT numbers them)."""
    if not raw:
        return frozenset()
    return frozenset(i * 8 + j for i, byte in enumerate(raw) for j in range(8) if byte & (0x80 >> j))


async def done_batches(redis: Redis, collection: str, revision: str) -> frozenset[int]:
    """The batches of the build of ``collection`` at ``revision`` that are stored."""
    return _bits(await redis.get(keys.corpus_progress(collection, revision)))


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
        old_model = meta.get("model")

        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.hset(meta_key, "model", model)
        pipe.hincrby(meta_key, "version", 1)
        pipe.hdel(meta_key, "revision", *(_BUILD + rev for rev in builds))
        if old_model is not None and old_model != model:
            pipe.srem(keys.corpora_by_model(old_model), collection)
            pipe.hdel(meta_key, "created")
        pipe.sadd(keys.corpora_by_model(model), collection)
        pipe.sadd(keys.CORPORA, collection)  # the console lists collections from it
        for rev in builds:
            pipe.delete(keys.corpus_progress(collection, rev), keys.corpus_claims(collection, rev))
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


async def collection_names(redis: Redis) -> list[str]:
    """Every loaded collection, sorted (the union of the per-model sets; a SCAN, for operators not jobs)."""
    names: set[str] = set()
    async for key in redis.scan_iter(match=keys.corpora_by_model("*"), count=500):
        names.update(m.decode() for m in await redis.smembers(key))  # type: ignore[misc]
    return sorted(names)


async def _meta(redis: Redis, collection: str) -> dict[str, str]:
    check_collection(collection)
    meta = _decode(await redis.hgetall(keys.corpus_meta(collection)))  # type: ignore[misc]
    if not meta:
        msg = f"collection {collection!r} does not exist"
        raise CorpusError(msg)
    return meta


def _active(collection: str, meta: dict[str, str]) -> Slot | None:
    revision = meta.get("revision")
    return None if revision is None else Slot(collection, revision, int(meta.get("version", 0)))


def _require_active(collection: str, meta: dict[str, str]) -> Slot:
    slot = _active(collection, meta)
    if slot is None:
        msg = f"collection {collection!r} has no embedded revision yet (it is re-embedded on the next deployment)"
        raise CorpusError(msg)
    return slot


async def active_slot(redis: Redis, collection: str) -> Slot | None:
    """The slot of the active revision; None before the first embedding (or after a load). CorpusError when
    the collection does not exist."""
    return _active(collection, await _meta(redis, collection))


async def live_slots(redis: Redis, collection: str) -> list[Slot]:
    """The slots a vector store must keep for ``collection``: the active one and those of builds in progress."""
    meta = _decode(await redis.hgetall(keys.corpus_meta(collection)))  # type: ignore[misc]
    slots = [s for s in [_active(collection, meta)] if s is not None]
    for name, value in meta.items():
        if name.startswith(_BUILD):
            pinned = json.loads(value)
            slots.append(Slot(collection, name.removeprefix(_BUILD), int(pinned["version"])))
    return slots


async def collection_state(redis: Redis, collection: str) -> CollectionState:
    """Model, active revision and build progress of one collection (for the console and operators)."""
    meta = await _meta(redis, collection)
    documents = int(await redis.llen(keys.corpus_ids(collection)))  # type: ignore[misc]
    builds: dict[str, dict[str, int]] = {}
    for name, value in sorted(meta.items()):
        if name.startswith(_BUILD):
            revision, pinned = name.removeprefix(_BUILD), json.loads(value)
            done = int(await redis.bitcount(keys.corpus_progress(collection, revision)))
            size = int(pinned["batch_size"])
            builds[revision] = {"version": int(pinned["version"]), "batch_size": size, "batches_done": done,
                                "batches": -(-documents // size)}
    return CollectionState(collection, meta["model"], int(meta.get("version", 0)), meta.get("revision"),
                           documents, builds)


async def export_corpus(redis: Redis, store: VectorStore, collection: str) -> AsyncIterator[dict[str, Any]]:
    """``{"id", "model", "revision", "embedding"}`` per document in load order, for the active revision.

    Raises ``CorpusError`` when the collection does not exist, has no embedded revision yet, or changes
    (a load or a new revision) while being exported.
    """
    meta = await _meta(redis, collection)
    slot, model = _require_active(collection, meta), meta["model"]
    ids_key, start = keys.corpus_ids(collection), 0
    while True:
        ids = [i.decode() for i in await redis.lrange(ids_key, start, start + _READ_CHUNK - 1)]  # type: ignore[misc]
        if not ids:
            return
        for doc_id, vector in zip(ids, await store.vectors(slot, ids), strict=True):
            if vector is None:
                msg = f"collection {collection!r} changed during the export; export again"
                raise CorpusError(msg)
            yield {"id": doc_id, "model": model, "revision": slot.revision, "embedding": vector}
        start += len(ids)


async def search_corpus(
    redis: Redis, store: VectorStore, collection: str, embed: Callable[[str], Awaitable[Sequence[float]]],
    text: str, *, k: int,
) -> list[Hit]:
    """The ``k`` documents of the active revision nearest ``text``, embedded by ``embed(model)``.

    CorpusError when the collection does not exist or has no embedded revision yet.
    """
    if k < 1:
        msg = f"k must be >= 1, got {k}"
        raise CorpusError(msg)
    meta = await _meta(redis, collection)
    slot = _require_active(collection, meta)
    return await store.search(slot, await embed(meta["model"]), k)


# --- builds (used by handlers.embeddings) -----------------------------------------------------------
async def start_build(
    redis: Redis, collection: str, *, model: str, revision: str, created: int, batch_size: int
) -> Build | None:
    """Start or resume embedding ``collection`` at ``revision``; None when there is nothing to do.

    Nothing to do: the collection is gone or bound to another model, already active at ``revision``, or
    its active revision came from a deployment event newer than ``created``. A build started afresh
    (no batch done) may find vectors of an earlier attempt in its slot: they are
    overwritten batch by batch, as every batch covers the same ids.
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
        ids = [i.decode() for i in await pipe.lrange(keys.corpus_ids(collection), 0, -1)]  # type: ignore[misc]
        done = _bits(await pipe.get(progress_key)) if resume else frozenset()
        build = Build.cut(collection, model, revision, version, size, ids, done)
        pipe.multi()  # type: ignore[no-untyped-call]
        if not resume:
            pipe.delete(progress_key, keys.corpus_claims(collection, revision))
        pipe.hset(meta_key, _BUILD + revision, build.marker)
        await pipe.execute()
        return build

    return await _watched(redis, [meta_key], begin)


async def join_build(redis: Redis, collection: str, revision: str) -> Build | None:
    """The build of ``collection`` at ``revision`` that some job started, to share its batches; None when there
    is none (not started yet, finished, or cancelled by a load). Writes nothing."""
    meta = _decode(await redis.hgetall(keys.corpus_meta(check_collection(collection))))  # type: ignore[misc]
    pinned = json.loads(meta.get(_BUILD + revision, "null"))
    version = int(meta.get("version", 0))
    if not isinstance(pinned, dict) or pinned.get("version") != version or meta.get("revision") == revision:
        return None
    ids = [i.decode() for i in await redis.lrange(keys.corpus_ids(collection), 0, -1)]  # type: ignore[misc]
    done = await done_batches(redis, collection, revision)
    return Build.cut(collection, meta["model"], revision, version, int(pinned["batch_size"]), ids, done)


async def claim_batch(claims: BatchClaims, build: Build, *, owner: str, lease_s: float, finished: int = -1
                      ) -> int | None:
    """A batch of ``build`` nobody else works on now, leased to ``owner`` for ``lease_s``; None when none is
    free (every batch is done or leased to others: ``done_batches`` tells which). ``finished``: the batch
    ``owner`` just stored, whose lease is dropped in the same round trip. CorpusChanged when the build was
    superseded (a load, a restart from batch 0, or the flip)."""
    index = await claims.claim(
        meta=keys.corpus_meta(build.collection), progress=keys.corpus_progress(build.collection, build.revision),
        claims=keys.corpus_claims(build.collection, build.revision), field=_BUILD + build.revision,
        marker=build.marker, batches=len(build.batches), lease_ms=max(1, round(lease_s * 1000)), owner=owner,
        finished=finished)
    if index == CHANGED:
        msg = f"the build of {build.collection!r}@{build.revision!r} changed while batches were claimed"
        raise CorpusChanged(msg)
    if index in (HELD, ALL_DONE):
        return None
    if not 0 <= index < len(build.batches):
        msg = f"claimed batch {index} is not one of the {len(build.batches)} batches"
        raise CorpusChanged(msg)
    return index


async def release_batches(claims: BatchClaims, build: Build, *, owner: str) -> int:
    """Give back the batches ``owner`` still holds (its attempt ended, or a batch failed): another job, or the
    next attempt, claims them at once."""
    return await claims.release(claims=keys.corpus_claims(build.collection, build.revision), owner=owner)


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


async def commit_batch(redis: Redis, build: Build, index: int) -> bool:
    """Record batch ``index`` as finished (its vectors are in the store); False if it already was.

    Batches may be committed in any order and concurrently: each sets its own bit.
    """
    if not 0 <= index < len(build.batches):
        msg = f"batch {index} is not one of the {len(build.batches)} batches"
        raise ValueError(msg)
    meta_key = keys.corpus_meta(build.collection)
    progress_key = keys.corpus_progress(build.collection, build.revision)

    async def commit(pipe: Pipeline) -> bool:
        if not await _check_build(pipe, build):
            return False
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.setbit(progress_key, index, 1)
        (was,) = await pipe.execute()
        return not was

    return await _watched(redis, [meta_key], commit)


async def restart_build(redis: Redis, build: Build) -> None:
    """Forget which batches are done (its store slot lost vectors); a no-op when it was superseded."""
    meta_key = keys.corpus_meta(build.collection)
    progress_key = keys.corpus_progress(build.collection, build.revision)

    async def reset(pipe: Pipeline) -> None:
        try:
            if not await _check_build(pipe, build):
                return
        except CorpusChanged:
            return
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.delete(progress_key, keys.corpus_claims(build.collection, build.revision))
        await pipe.execute()

    await _watched(redis, [meta_key, progress_key], reset)


async def finish_build(redis: Redis, build: Build, *, created: int) -> Flip:
    """Make ``build.revision`` the active one once every batch is in (the caller has checked that the store
    holds one vector per document).

    It does not flip when the revision is already active, or when a newer deployment event's revision
    became active meanwhile (``superseded``: the caller drops the build's vectors).
    """
    meta_key = keys.corpus_meta(build.collection)
    progress_key = keys.corpus_progress(build.collection, build.revision)

    async def flip(pipe: Pipeline) -> Flip:
        if not await _check_build(pipe, build):
            return Flip(flipped=False, superseded=False)
        done = int(await pipe.bitcount(progress_key))
        if done != len(build.batches):
            msg = f"build of {build.collection!r}@{build.revision!r} has {done} of {len(build.batches)} batches"
            raise CorpusChanged(msg)
        old_created = await pipe.hget(meta_key, "created")  # type: ignore[misc]
        superseded = old_created is not None and int(old_created) > created
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.hdel(meta_key, _BUILD + build.revision)
        pipe.delete(progress_key, keys.corpus_claims(build.collection, build.revision))
        if not superseded:
            pipe.hset(meta_key, mapping={"revision": build.revision, "created": created})
        await pipe.execute()
        return Flip(flipped=not superseded, superseded=superseded)

    return await _watched(redis, [meta_key, progress_key], flip)


async def store_batch(
    redis: Redis, store: VectorStore, build: Build, index: int, vectors: Sequence[Sequence[float]]
) -> bool:
    """Write batch ``index``'s vectors to the store, then record it finished; False if it already was."""
    ids = build.batches[index]
    if len(vectors) != len(ids):
        msg = f"batch {index} has {len(ids)} documents but {len(vectors)} vectors"
        raise ValueError(msg)
    await store.write(build.slot, model=build.model, ids=ids, vectors=vectors)
    return await commit_batch(redis, build, index)


async def complete_build(redis: Redis, store: VectorStore, build: Build, *, created: int) -> bool:
    """Flip to the build's revision once the store holds one vector per document; True when it flipped.

    A store short of vectors (a slot dropped under a running build) sets the build back to batch 0 and
    raises ``CorpusChanged``. After the flip the store is pointed at the new slot; a superseded build's
    slot is dropped; and every slot neither active nor being built is pruned.
    """
    done = await done_batches(redis, build.collection, build.revision)
    if len(done) != len(build.batches):  # not a loss: the build resumes with the missing batches
        msg = f"build of {build.collection!r}@{build.revision!r} has {len(done)} of {len(build.batches)} batches"
        raise CorpusChanged(msg)
    stored = await store.count(build.slot)
    if stored != build.documents:
        await restart_build(redis, build)
        msg = f"the vector store holds {stored} of {build.documents} vectors of {build.collection!r}"
        raise CorpusChanged(msg)
    flip = await finish_build(redis, build, created=created)
    if flip.flipped:
        await store.activate(build.slot)
    if flip.superseded:
        await store.drop(build.slot)
    await store.prune(build.collection, keep=await live_slots(redis, build.collection))
    return flip.flipped
