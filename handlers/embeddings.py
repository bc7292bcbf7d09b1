"""Re-embedding (contract §6): a ready/updated embeddings deployment re-embeds the collections of its model.

For each collection bound to ``data.model`` and not active at ``data.revision``, a build is started or
resumed (``handlers.corpus``): the ids in load order are cut into batches of ``embed_batch_size`` (pinned
when the build starts), each remaining batch is POSTed to ``/embeddings``, its vectors and the progress
are committed in one MULTI/EXEC, and the active revision flips once all batches are in (dropping the
previous revision's vectors). A retried job resumes after the last committed batch.

Idempotency-Key: step ``embed:<collection>:<revision>:<corpus version>``, part = batch index. The corpus
version is part of the step because a load between two attempts changes what a batch contains: the same
key with another body would be refused by the gateway (``idempotency_key_reused``), and a key must name
one logical call. A load during a build makes the build raise ``TransientError``; the retry starts over
against the new corpus, with new keys.

A response without one finite numeric vector per input (matched by ``index``, all of one dimension) is
``PermanentError("invalid_gateway_response")``: retrying the same key would replay the same answer.
"""

from __future__ import annotations

import math
from typing import Any

import structlog
from runinfra_webhooks.handlers.context import HandlerContext
from runinfra_webhooks.handlers.corpus import (
    Build,
    CorpusChanged,
    batch_texts,
    collections_for_model,
    commit_batch,
    finish_build,
    start_build,
)
from runinfra_webhooks.handlers.errors import PermanentError, TransientError
from runinfra_webhooks.handlers.registry import handler
from runinfra_webhooks.service.core.events import DeploymentReady, DeploymentUpdated

__all__ = ["embed_collection", "handle", "parse_embeddings", "step_name"]

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


@handler("deployment.ready")
@handler("deployment.updated")
async def handle(event: DeploymentReady | DeploymentUpdated, ctx: HandlerContext) -> None:
    data = event.data
    if data.modality != MODALITY:
        return
    # Every deployment.ready/updated of an embeddings model asks this; most have no collection.
    for collection in await collections_for_model(ctx.require_redis(), data.model, via=ctx.scripts):
        await embed_collection(ctx, collection, model=data.model, revision=data.revision, created=event.created)


async def embed_collection(ctx: HandlerContext, collection: str, *, model: str, revision: str, created: int) -> bool:
    """Embed (or finish embedding) ``collection`` at ``revision``; True when that revision became active."""
    build = await start_build(ctx.require_redis(), collection, model=model, revision=revision, created=created,
                              batch_size=ctx.require_settings().embed_batch_size)
    if build is None:
        return False
    batches = build.batches
    log.info(
        "embeddings.build",
        event_id=ctx.event_id,
        collection=collection,
        revision=revision,
        batches=len(batches),
        resume_at=build.done,
    )
    try:
        for index in range(build.done, len(batches)):
            texts = await batch_texts(ctx.require_redis(), build, index)
            response = await ctx.call_gateway(
                ROUTE, {"model": model, "input": texts}, step=step_name(build), part=index
            )
            if await commit_batch(ctx.require_redis(), build, index, parse_embeddings(response.json(), len(texts))):
                ctx.note_progress()
        flipped = await finish_build(ctx.require_redis(), build, created=created)
    except CorpusChanged as exc:
        raise TransientError(f"{exc}; the build starts over") from exc
    log.info(
        "embeddings.done" if flipped else "embeddings.not_flipped",
        event_id=ctx.event_id,
        collection=collection,
        revision=revision,
    )
    return flipped
