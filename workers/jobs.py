"""The arq jobs: process_event(event_id, generation), and process_part, a helper of a shared build.

Load the record, mark it processing, run the type's handlers on the typed event, store the outcome.
At-least-once: a job may run again after a crash or a lost acknowledgement, so the record's state and
generation decide whether there is anything left to do, and every handler is idempotent.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from arq import Retry
from pydantic import ValidationError
from redis.exceptions import ResponseError

from runinfra_webhooks.handlers.context import HandlerContext
from runinfra_webhooks.handlers.embeddings import BUSY_HERE, join_collection, open_store
from runinfra_webhooks.handlers.registry import Registration
from runinfra_webhooks.service.core.events import (
    CATALOGUE,
    Envelope,
    InvalidJSON,
    parse_event,
    parse_event_json,
    parse_json_object,
)
from runinfra_webhooks.service.gateway.flow import GatewayHeld
from runinfra_webhooks.service.storage.records import EventRecord
from runinfra_webhooks.service.storage.redis_errors import classify
from runinfra_webhooks.workers.deps import WorkerDeps
from runinfra_webhooks.workers.retry import SCRIPT_NAMES, decide

__all__ = ["process_event", "process_part"]

log = structlog.get_logger("workers.jobs")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def process_event(ctx: dict[str, Any], event_id: str, generation: int) -> str:
    deps: WorkerDeps = ctx["deps"]
    records = deps.records
    bound = log.bind(event_id=event_id, generation=generation, job_try=ctx.get("job_try"))
    try:
        record = await records.start(event_id, generation, _now_ms())
    except ResponseError as exc:
        # The start script refused the stored record (a corrupt field): it wrote nothing, and would refuse
        # again on every retry, so the event is parked at once with a code naming the script.
        failure = classify(exc, SCRIPT_NAMES)
        if failure is None or failure.transient:
            raise
        await records.dead_lettered(event_id, generation, _now_ms(), failure.code, failure.detail)
        bound.warning("event.dead_lettered", reason=failure.code)
        return "dead_lettered"
    if isinstance(record, int):
        # -1 record gone, -2 superseded by a replay, -3 already finished: a late or repeated job; -4 paused type.
        bound.info("event.skipped", code=record)
        return "skipped"
    # The attempt's consumer span continues the trace kept in the record (a no-op without tracing).
    with deps.tracing.attempt(record, job_id=str(ctx.get("job_id", ""))):
        return await _attempt(deps, record, generation, bound)


async def _attempt(deps: WorkerDeps, record: EventRecord, generation: int, bound: Any) -> str:
    records, settings, event_id = deps.records, deps.settings, record.event_id
    attempt = record.attempts
    bound = bound.bind(type=record.type, attempt=attempt)

    handlers = deps.registry.for_type(record.type)
    try:
        # A catalogued type is parsed once for all its handlers (straight from the bytes when it fits, as the
        # receiver does); another type per handler, by its own model.
        events: list[tuple[Registration, Envelope]]
        if record.type in CATALOGUE:
            typed = parse_event_json(record.body) or parse_event(parse_json_object(record.body))
            events = [(h, typed) for h in handlers]
        else:
            obj = parse_json_object(record.body)
            events = [(h, h.parse(obj)) for h in handlers]
    except (InvalidJSON, ValidationError):
        await records.dead_lettered(event_id, generation, _now_ms(), "invalid_payload", "data does not fit its model")
        bound.warning("event.dead_lettered", reason="invalid_payload")
        return "dead_lettered"

    async def record_gateway_call(request_id: str, idempotency_key: str) -> None:
        await records.add_request_id(event_id, request_id, idempotency_key)

    progressed = False

    def note_progress() -> None:
        nonlocal progressed
        progressed = True

    def context(h: Registration) -> HandlerContext:
        return HandlerContext(event_id=event_id, generation=generation, attempt=attempt, settings=settings,
                              redis=deps.redis, gateway=deps.gateway, scope="" if h.builtin else h.name,
                              log=bound.bind(handler=h.name), record_gateway_call=record_gateway_call,
                              note_progress=note_progress, scripts=records.scripts)

    try:
        # Our own deadline, shorter than arq's: arq treats its timeout as a final failure, we retry.
        async with asyncio.timeout(settings.job_timeout):
            for i, (h, event) in enumerate(events):
                if h.name in record.handlers_done:
                    continue  # finished in an earlier attempt of this generation
                await h.func(event, context(h))
                if i < len(events) - 1:  # the last one's success is the event's own
                    await records.handler_done(event_id, generation, h.name)
    except Exception as exc:
        if isinstance(exc, GatewayHeld):  # waited on gateway flow control (open circuit, limits): not an attempt
            await records.retrying(event_id, generation, _now_ms(), exc.code, progressed=progressed, counted=False)
            bound.info("event.waiting", error=exc.code, delay=round(exc.retry_after or 0.0, 3))
            raise Retry(defer=exc.retry_after or 1.0) from None
        # An attempt that saved progress starts the count over (see HandlerContext.note_progress).
        d = decide(exc, attempt=1 if progressed else attempt, max_attempts=settings.max_attempts,
                   base=settings.retry_base, cap=settings.retry_cap)
        if d.retry:
            await records.retrying(event_id, generation, _now_ms(), d.error, progressed=progressed)
            bound.info("event.retrying", error=d.error, delay=round(d.delay, 3))
            raise Retry(defer=d.delay) from None
        await records.dead_lettered(event_id, generation, _now_ms(), d.reason, d.error)
        bound.warning("event.dead_lettered", reason=d.reason, error=d.error)
        return "dead_lettered"

    await records.succeeded(event_id, generation, _now_ms())
    bound.info("event.succeeded")
    return "succeeded"


async def process_part(ctx: dict[str, Any], event_id: str, generation: int, collection: str, revision: str) -> str:
    """A helper of one build of the event's re-embedding: run the batches it can claim, then end.

    It owns no event state (no attempt, no outcome): the event's own job takes over whatever a helper leaves,
    including batches of a helper that failed or died, and flips. So a helper's failure is logged, not retried.
    """
    deps: WorkerDeps = ctx["deps"]
    settings = deps.settings
    bound = log.bind(event_id=event_id, generation=generation, collection=collection, revision=revision, part=True)
    record = await deps.records.get(event_id)
    if record is None or record.generation != generation or record.state not in ("queued", "processing", "retrying"):
        bound.info("part.skipped")  # the event finished, or a replay began a new generation with its own helpers
        return "skipped"

    async def record_gateway_call(request_id: str, idempotency_key: str) -> None:
        await deps.records.add_request_id(event_id, request_id, idempotency_key)

    hctx = HandlerContext(event_id=event_id, generation=generation, attempt=record.attempts, settings=settings,
                          redis=deps.redis, gateway=deps.gateway, log=bound, scripts=deps.records.scripts,
                          record_gateway_call=record_gateway_call)
    try:
        async with asyncio.timeout(settings.job_timeout), open_store(settings, deps.redis) as store:
            ran = await join_collection(hctx, store, collection, revision)
    except Exception as exc:  # the event's job redoes what a helper could not
        bound.warning("part.failed", error=type(exc).__name__)
        return "failed"
    if ran == BUSY_HERE:
        raise Retry(defer=settings.build_part_defer)  # let another worker take it
    return "done"
