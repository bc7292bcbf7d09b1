"""The one arq job: process_event(event_id, generation).

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
from runinfra_webhooks.handlers import HandlerContext, handlers_for
from runinfra_webhooks.service.core.events import InvalidJSON, parse_event, parse_json_object
from runinfra_webhooks.workers.deps import WorkerDeps
from runinfra_webhooks.workers.retry import decide

__all__ = ["process_event"]

log = structlog.get_logger("workers.jobs")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def process_event(ctx: dict[str, Any], event_id: str, generation: int) -> str:
    deps: WorkerDeps = ctx["deps"]
    records, settings = deps.records, deps.settings
    bound = log.bind(event_id=event_id, generation=generation, job_try=ctx.get("job_try"))
    record = await records.start(event_id, generation, _now_ms())
    if isinstance(record, int):
        # -1 record gone, -2 superseded by a replay, -3 already finished: a late or repeated job.
        bound.info("event.skipped", code=record)
        return "skipped"
    attempt = record.attempts
    bound = bound.bind(type=record.type, attempt=attempt)

    try:
        event = parse_event(parse_json_object(record.body))
    except (InvalidJSON, ValidationError):
        await records.dead_lettered(event_id, generation, _now_ms(), "invalid_payload", "data does not fit its model")
        bound.warning("event.dead_lettered", reason="invalid_payload")
        return "dead_lettered"

    async def record_request_id(request_id: str) -> None:
        await records.add_request_id(event_id, request_id)

    async def record_gateway_call(request_id: str, idempotency_key: str) -> None:
        await records.add_request_id(event_id, request_id, idempotency_key)

    progressed = False

    def note_progress() -> None:
        nonlocal progressed
        progressed = True

    hctx = HandlerContext(settings=settings, redis=deps.redis, event_id=event_id, generation=generation,
                          gateway=deps.gateway, record_request_id=record_request_id, note_progress=note_progress,
                          scripts=records.scripts, record_gateway_call=record_gateway_call)
    try:
        # Our own deadline, shorter than arq's: arq treats its timeout as a final failure, we retry.
        async with asyncio.timeout(settings.job_timeout):
            for handler in handlers_for(event.type):
                await handler(event, hctx)
    except Exception as exc:
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
