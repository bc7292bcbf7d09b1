"""Pausing event types: paused events are still received, acknowledged and audited, then wait as ``queued``.

The pause itself is a set of type names (``keys.PAUSED_TYPES``; ``*`` pauses every type). The job start
(``Records.start``) checks it in the same script that would mark the event processing, and parks a paused
event in ``keys.PARKED`` instead, outside the in-flight index so the sweep neither re-queues nor expires it.
``resume`` lifts the pause and puts each parked event of the resumed types back on arq's queue.
"""

from __future__ import annotations

import re

from redis.asyncio import Redis

from runinfra_webhooks.service.storage import arq_job, keys

__all__ = ["EVENT_TYPE", "is_paused", "pause", "paused_types", "resume"]

EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")  # dot-separated lowercase words
_PAGE = 500

# KEYS: event, arq job, arq queue, parked, inflight, paused types. ARGV: event id, generation, now, job expiry
# ms, job payload, job id. Only a still-parked, still-queued event of a type no longer paused moves.
_UNPARK = """
if not redis.call('ZSCORE', KEYS[4], ARGV[1]) then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' or redis.call('HGET', KEYS[1], 'generation') ~= ARGV[2] then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return 0
end
local event_type = redis.call('HGET', KEYS[1], 'type')
if redis.call('SISMEMBER', KEYS[6], event_type) == 1 or redis.call('SISMEMBER', KEYS[6], '*') == 1 then
  return 0
end
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[6])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[1], 'updated_ms', ARGV[3])
return 1
"""


async def pause(redis: Redis, event_type: str | None) -> list[str]:
    """Pause one type (``None``: every type); the paused types afterwards."""
    await redis.sadd(keys.PAUSED_TYPES, event_type or keys.PAUSED_ALL)  # type: ignore[misc]
    return await paused_types(redis)


async def paused_types(redis: Redis) -> list[str]:
    members = await redis.smembers(keys.PAUSED_TYPES)  # type: ignore[misc]
    return sorted(m.decode() for m in members)


async def is_paused(redis: Redis, event_type: str) -> bool:
    flags = await redis.smismember(keys.PAUSED_TYPES, [event_type, keys.PAUSED_ALL])  # type: ignore[misc]
    return any(flags)


async def resume(redis: Redis, event_type: str | None, *, now_ms: int, job_expiry_ms: int) -> int:
    """Lift the pause of one type (``None``: every pause, ``*`` included) and re-queue the parked events
    that are no longer paused; the number re-queued. A type still covered by ``*`` stays paused."""
    if event_type is None:
        await redis.delete(keys.PAUSED_TYPES)
    else:
        await redis.srem(keys.PAUSED_TYPES, event_type)  # type: ignore[misc]
    unpark = redis.register_script(_UNPARK)
    moved = 0
    start = 0
    while True:
        ids = [i.decode() for i in await redis.zrange(keys.PARKED, start, start + _PAGE - 1)]
        if not ids:
            return moved
        pipe = redis.pipeline(transaction=False)
        for event_id in ids:
            pipe.hmget(keys.event(event_id), ["type", "generation"])
        rows = await pipe.execute()
        kept = 0
        for event_id, (raw_type, raw_generation) in zip(ids, rows, strict=True):
            if event_type is not None and raw_type is not None and raw_type.decode() != event_type:
                kept += 1
                continue
            generation = int(raw_generation or 0)
            job_id = keys.job_id(event_id, generation)
            done = await unpark(
                keys=[keys.event(event_id), keys.ARQ_JOB + job_id, keys.ARQ_QUEUE, keys.PARKED, keys.INFLIGHT,
                      keys.PAUSED_TYPES],
                args=[event_id, generation, now_ms, job_expiry_ms, arq_job.payload(event_id, generation, now_ms),
                      job_id],
            )
            if done:
                moved += 1
            elif await redis.zscore(keys.PARKED, event_id) is not None:
                kept += 1
        start += kept  # what stayed parked keeps its place ahead of the next page
