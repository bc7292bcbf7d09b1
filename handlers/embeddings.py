"""Re-embedding: a ready/updated embeddings deployment re-embeds the collections of its model.

For each collection bound to ``data.model`` and not active at ``data.revision``, a build is started or
resumed (``handlers.corpus``): the ids in load order are cut into batches of ``embed_batch_size`` (pinned
when the build starts), each remaining batch is POSTed to ``/embeddings`` (``embed_concurrency`` batches
in flight at once: a build waits on the gateway, not on us), its vectors are written to the vector store
(``RUNINFRA_VECTOR_STORE``) and then the batch is marked done, and the active revision flips once all
batches are in and the store holds one vector per document. A batch that fails stops its job claiming
more; the batches in flight finish, and the first error is the attempt's.

Batches are claimed one at a time under a lease (``corpus.claim_batch``), so with ``build_parts`` > 1 helper
jobs on other workers (``join_collection``) share the build: the event's job waits for the batches they
hold (taking over those whose lease ends) and is the only one that flips. The store is then pointed at the new
revision and drops every slot no longer active or being built. A retried job runs only the batches not
marked done; a crash between a write and its mark rewrites the same vectors (the gateway replays the
same answer for the same key, uncharged).

The store is opened once per event (for Qdrant's embedded mode, that holds its directory lock until the
builds of the event end). A store that is busy or unreachable is a transient failure; a store whose
client library is missing is permanent (``vector_store_unavailable``).

Idempotency-Key: step ``embed:<collection>:<revision>:<corpus version>``, part = batch index. The corpus
version is part of the step because a load between two attempts changes what a batch contains: the same
key with another body would be refused by the gateway (``idempotency_key_reused``), and a key must name
one logical call. A load during a build makes the build raise ``TransientError``; the retry starts over
against the new corpus, with new keys.

A response without one finite numeric vector per input (matched by ``index``, all of one dimension) is
``PermanentError("invalid_gateway_response")``: retrying the same key would replay the same answer.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import structlog
from redis.asyncio import Redis

from runinfra_webhooks.handlers.context import HandlerContext
from runinfra_webhooks.handlers.corpus import (
    Build,
    CorpusChanged,
    active_slot,
    batch_texts,
    claim_batch,
    collections_for_model,
    complete_build,
    done_batches,
    join_build,
    release_batches,
    start_build,
    store_batch,
)
from runinfra_webhooks.handlers.errors import PermanentError, TransientError
from runinfra_webhooks.handlers.registry import handler
from runinfra_webhooks.service.core.events import DeploymentReady, DeploymentUpdated
from runinfra_webhooks.service.settings import WorkerSettings
from runinfra_webhooks.service.storage.batch_claims import BatchClaims
from runinfra_webhooks.service.storage.build_parts import enqueue_parts
from runinfra_webhooks.service.storage.vectors import (
    VectorStore,
    VectorStoreBusy,
    VectorStoreUnavailable,
    open_vector_store,
)

__all__ = ["BUSY_HERE", "embed_collection", "handle", "join_collection", "open_store", "parse_embeddings",
           "step_name"]

log = structlog.get_logger(__name__)

MODALITY = "embeddings"
ROUTE = "/embeddings"
BUSY_HERE = -1  # join_collection: this process already works on that build
# How often the event's job looks again at batches leased to other jobs, once it has none left to claim.
_HELD_POLL_S = 0.05

# Builds this process works on now ((collection, revision) -> jobs): a helper job that lands on a worker already
# on its build hands itself on, so the helpers spread over the workers instead of doubling one worker's calls.
_here: dict[tuple[str, str], int] = {}


@contextmanager
def _working_on(build: Build) -> Iterator[None]:
    key = (build.collection, build.revision)
    _here[key] = _here.get(key, 0) + 1
    try:
        yield
    finally:
        _here[key] -= 1
        if not _here[key]:
            del _here[key]


def step_name(build: Build) -> str:
    return f"embed:{build.collection}:{build.revision}:{build.version}"


def parse_embeddings(payload: Any, expected: int) -> list[list[float]]:
    """The vectors of an OpenAI-style embeddings response, in input order; PermanentError if malformed."""

    def invalid(detail: str) -> PermanentError:
        return PermanentError("invalid_gateway_response", f"/embeddings: {detail}")

    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        raise invalid("no 'data' list")
    if len(data) != expected:
        raise invalid(f"{len(data)} embeddings for {expected} inputs")
    vectors: dict[int, list[float]] = {}
    for item in data:
        index = item.get("index") if isinstance(item, dict) else None
        vector = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < expected or index in vectors:
            raise invalid(f"bad or repeated 'index' {index!r}")
        if not isinstance(vector, list) or not vector or not all(_is_number(x) for x in vector):
            raise invalid(f"embedding {index} is not a non-empty list of finite numbers")
        vectors[index] = [float(x) for x in vector]
    if len({len(v) for v in vectors.values()}) > 1:
        raise invalid("embeddings of different dimensions")
    return [vectors[i] for i in range(expected)]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@asynccontextmanager
async def open_store(settings: WorkerSettings, redis: Redis) -> AsyncIterator[VectorStore]:
    """The configured vector store, with its failures mapped to the handler's error kinds."""
    key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key is not None else None
    try:
        async with open_vector_store(settings.vector_store, redis, qdrant_api_key=key,
                                     lock_wait=settings.qdrant_lock_wait, timeout=settings.qdrant_timeout) as store:
            yield store
    except VectorStoreUnavailable as exc:
        raise PermanentError(exc.code, str(exc)) from exc
    except VectorStoreBusy as exc:
        raise TransientError(str(exc)) from exc


@handler("deployment.ready")
@handler("deployment.updated")
async def handle(event: DeploymentReady | DeploymentUpdated, ctx: HandlerContext) -> None:
    data = event.data
    if data.modality != MODALITY:
        return
    # Every deployment.ready/updated of an embeddings model asks this; most have no collection.
    collections = await collections_for_model(ctx.require_redis(), data.model, via=ctx.scripts)
    if not collections:
        return
    async with open_store(ctx.require_settings(), ctx.require_redis()) as store:
        for collection in collections:
            await embed_collection(ctx, store, collection, model=data.model, revision=data.revision,
                                   created=event.created)


async def embed_collection(
    ctx: HandlerContext, store: VectorStore, collection: str, *, model: str, revision: str, created: int
) -> bool:
    """Embed (or finish embedding) ``collection`` at ``revision``; True when that revision became active."""
    build = await start_build(ctx.require_redis(), collection, model=model, revision=revision, created=created,
                              batch_size=ctx.require_settings().embed_batch_size)
    if build is None:
        # Already active: point the store at it again, in case an attempt died between the flip and that.
        active = await active_slot(ctx.require_redis(), collection)
        if active is not None and active.revision == revision:
            await store.activate(active)
        return False
    log.info(
        "embeddings.build",
        event_id=ctx.event_id,
        collection=collection,
        revision=revision,
        store=store.kind,
        batches=len(build.batches),
        already_done=len(build.done),
    )

    settings, redis = ctx.require_settings(), ctx.require_redis()
    if settings.build_parts > 1 and len(build.pending) > 1:
        await enqueue_parts(redis, event_id=ctx.event_id, generation=ctx.generation, collection=collection,
                            revision=revision, parts=settings.build_parts - 1, expiry_s=settings.lost_deadline)
    try:
        with _working_on(build):
            here = await _run_batches(ctx, store, build, wait=True)
        flipped = await complete_build(redis, store, build, created=created)
    except CorpusChanged as exc:
        raise TransientError(f"{exc}; the build starts over") from exc
    log.info(
        "embeddings.done" if flipped else "embeddings.not_flipped",
        event_id=ctx.event_id,
        collection=collection,
        revision=revision,
        batches_here=here,
    )
    return flipped


async def join_collection(ctx: HandlerContext, store: VectorStore, collection: str, revision: str) -> int:
    """A helper's share of the build of ``collection`` at ``revision`` that the event's own job started: claim
    and run batches until none is free; returns how many it ran, or ``BUSY_HERE``. Never flips: the event's
    job does, once every batch is done. A build that is over (or cancelled) gives 0."""
    if (collection, revision) in _here:
        return BUSY_HERE
    build = await join_build(ctx.require_redis(), collection, revision)
    if build is None:
        return 0
    try:
        with _working_on(build):
            here = await _run_batches(ctx, store, build, wait=False)
    except CorpusChanged:  # flipped, restarted or reloaded meanwhile: nothing left for a helper
        return 0
    log.info("embeddings.part", event_id=ctx.event_id, collection=collection, revision=revision, batches_here=here)
    return here


async def _run_batches(ctx: HandlerContext, store: VectorStore, build: Build, *, wait: bool) -> int:
    """Claim and run batches of ``build`` (``embed_concurrency`` at once) until none is free; with ``wait``,
    then until every batch is done, taking over those whose lease expires. Returns how many ran here.

    A batch's lease lasts ``job_timeout``: no attempt runs longer, so a batch held by an attempt that died is
    free again by the time arq re-runs a job (and the idempotency key makes a late duplicate call uncharged).
    """
    settings, redis = ctx.require_settings(), ctx.require_redis()
    claims, owner, ran = BatchClaims(redis), uuid.uuid4().hex, 0

    async def one(index: int) -> None:
        texts = await batch_texts(redis, build, index)
        response = await ctx.call_gateway(ROUTE, {"model": build.model, "input": texts}, step=step_name(build),
                                          part=index)
        vectors = parse_embeddings(response.json(), len(texts))
        if await store_batch(redis, store, build, index, vectors):
            ctx.note_progress()

    failures: list[BaseException] = []

    async def lane() -> None:
        nonlocal ran
        finished = -1
        while not failures and (index := await claim_batch(claims, build, owner=owner, lease_s=settings.job_timeout,
                                                           finished=finished)) is not None:
            try:
                await one(index)
            except BaseException as exc:
                failures.append(exc)
                raise
            finished, ran = index, ran + 1

    try:
        while True:
            # A failure stops the lanes claiming; the batches in flight finish (their answers are paid for),
            # then the first failure is the attempt's, raised as itself (a PermanentError stays permanent).
            await asyncio.gather(*(lane() for _ in range(settings.embed_concurrency)), return_exceptions=True)
            if failures:
                raise failures[0]
            if not wait or len(await done_batches(redis, build.collection, build.revision)) == len(build.batches):
                return ran
            await asyncio.sleep(_HELD_POLL_S)  # the rest is leased to other jobs: wait for them (or their leases)
    finally:
        try:
            await release_batches(claims, build, owner=owner)
        except Exception as exc:  # Redis away: the leases end on their own, after job_timeout
            log.warning("embeddings.release_failed", event_id=ctx.event_id, error=type(exc).__name__)
