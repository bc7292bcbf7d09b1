"""Re-embedding: a ready/updated embeddings deployment re-embeds the collections of its model.

For each collection bound to ``data.model`` and not active at ``data.revision``, a build is started or
resumed (``handlers.corpus``): the ids in load order are cut into batches of ``embed_batch_size`` (pinned
when the build starts), each remaining batch is POSTed to ``/embeddings`` (``embed_concurrency`` batches
in flight at once: a build waits on the gateway, not on us), its vectors are written to the vector store
(``RUNINFRA_VECTOR_STORE``) and then the batch is marked done, and the active revision flips once all
batches are in and the store holds one vector per document. The first batch that fails stops the others
(batches already done stay done) and its error is the attempt's. The store is then pointed at the new
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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import structlog
from redis.asyncio import Redis
from runinfra_webhooks.handlers.context import HandlerContext
from runinfra_webhooks.handlers.corpus import (
    Build,
    CorpusChanged,
    active_slot,
    batch_texts,
    collections_for_model,
    complete_build,
    start_build,
    store_batch,
)
from runinfra_webhooks.handlers.errors import PermanentError, TransientError
from runinfra_webhooks.handlers.registry import handler
from runinfra_webhooks.service.core.events import DeploymentReady, DeploymentUpdated
from runinfra_webhooks.service.settings import WorkerSettings
from runinfra_webhooks.service.storage.vectors import (
    VectorStore,
    VectorStoreBusy,
    VectorStoreUnavailable,
    open_vector_store,
)

__all__ = ["embed_collection", "handle", "open_store", "parse_embeddings", "step_name"]

log = structlog.get_logger(__name__)

MODALITY = "embeddings"
ROUTE = "/embeddings"


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

    async def one(index: int) -> None:
        texts = await batch_texts(ctx.require_redis(), build, index)
        response = await ctx.call_gateway(ROUTE, {"model": model, "input": texts}, step=step_name(build), part=index)
        vectors = parse_embeddings(response.json(), len(texts))
        if await store_batch(ctx.require_redis(), store, build, index, vectors):
            ctx.note_progress()

    try:
        await _each(build.pending, ctx.require_settings().embed_concurrency, one)
        flipped = await complete_build(ctx.require_redis(), store, build, created=created)
    except CorpusChanged as exc:
        raise TransientError(f"{exc}; the build starts over") from exc
    log.info(
        "embeddings.done" if flipped else "embeddings.not_flipped",
        event_id=ctx.event_id,
        collection=collection,
        revision=revision,
    )
    return flipped


async def _each(items: Sequence[int], lanes: int, work: Callable[[int], Awaitable[None]]) -> None:
    """``work(item)`` for every item, at most ``lanes`` at once, in order of start; the first failure cancels
    the rest and is raised as itself (not wrapped in a group, so PermanentError stays permanent)."""
    pending = iter(items)

    async def lane() -> None:
        for item in pending:  # one shared iterator: each item is taken by exactly one lane
            await work(item)

    tasks = [asyncio.ensure_future(lane()) for _ in range(min(lanes, len(items)))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
