"""The processing state of each event (contract §5), kept in its Redis hash.

State moves queued -> processing -> (retrying -> processing)* -> succeeded | dead_lettered; replay moves a
dead-lettered event back to queued under a new generation. Every transition is one Lua script guarded by
the generation, so a stale job of an older generation can never overwrite a newer one's state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.coalesce import Coalescer
from runinfra_webhooks.service.storage.event_index import INDEX_LUA
from runinfra_webhooks.service.storage.ingest import arq_job_payload

__all__ = ["EventRecord", "Records", "ReplayRefused"]

IN_FLIGHT = ("queued", "processing", "retrying")

_START = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if redis.call('HGET', KEYS[1], 'generation') ~= ARGV[1] then return -2 end
if state ~= 'queued' and state ~= 'processing' and state ~= 'retrying' then return -3 end
redis.call('HSET', KEYS[1], 'state', 'processing', 'updated_ms', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
-- Console indexes (service.storage.event_index)
local ix = redis.call('HMGET', KEYS[1], 'received_ms', 'attempts', 'generation', 'type')
ix_move(KEYS[3], ARGV[3], state, 'processing', ix[1])
ix_history(KEYS[1], ARGV[2], 'processing', ix[2], ix[3], '')
-- The types offered by the console's filter (here rather than at ingest, whose budget is tighter).
if ix[4] then redis.call('SADD', KEYS[3] .. 'types', ix[4]) end
-- The record comes back with the transition: the job needs it next, and this saves a round trip.
return redis.call('HGETALL', KEYS[1])
"""

# ARGV: generation, now, event id, new state, last error, reason, ttl (0 = none), only while in flight (1/0),
#       reset attempts (1/0)
_FINISH = """
if redis.call('HGET', KEYS[1], 'generation') ~= ARGV[1] then return 0 end
if ARGV[8] == '1' then
  local state = redis.call('HGET', KEYS[1], 'state')
  if state ~= 'queued' and state ~= 'processing' and state ~= 'retrying' then return 0 end
end
-- Console indexes: the state this transition leaves (used in the block at the end)
local ix = redis.call('HMGET', KEYS[1], 'state', 'received_ms', 'attempts', 'type')
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'updated_ms', ARGV[2], 'last_error', ARGV[5], 'reason', ARGV[6])
if ARGV[4] == 'retrying' then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
else
  redis.call('ZREM', KEYS[2], ARGV[3])
end
if ARGV[4] == 'dead_lettered' then redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3]) end
if tonumber(ARGV[7]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[7]) end
if ARGV[9] == '1' then redis.call('HSET', KEYS[1], 'attempts', 0) end
-- Console indexes (service.storage.event_index)
ix_move(KEYS[4], ARGV[3], ix[1], ARGV[4], ix[2])
ix_history(KEYS[1], ARGV[2], ARGV[4], ix[3], ARGV[1], ARGV[5])
if tonumber(ARGV[7]) > 0 then ix_expires(KEYS[4], ARGV[3], ix[4], ARGV[2], ARGV[7]) end
return 1
"""

_ADD_REQUEST_ID = """
local ids = cjson.decode(redis.call('HGET', KEYS[1], 'gateway_request_ids') or '[]')
if #ids < 200 then table.insert(ids, ARGV[1]) end
redis.call('HSET', KEYS[1], 'gateway_request_ids', cjson.encode(ids))
-- The console shows each call with its key and the attempt it belongs to; kept across replays, capped.
local at = redis.call('HMGET', KEYS[1], 'generation', 'attempts')
local call = cjson.encode({request_id = ARGV[1], idempotency_key = ARGV[2], generation = tonumber(at[1] or '0'),
  attempt = tonumber(at[2] or '0')})
local calls = redis.call('HGET', KEYS[1], 'gateway_calls')
if not calls then
  calls = call
elseif #calls < 16384 then
  calls = calls .. '\\n' .. call
end
redis.call('HSET', KEYS[1], 'gateway_calls', calls)
return #ids
"""

# KEYS: event, inflight, dead, arq queue, arq job prefix ... ARGV: event id, now, job expiry ms, new generation
_REPLAY = """
if redis.call('HGET', KEYS[1], 'state') ~= 'dead_lettered' then return 0 end
local gen = redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', 0, 'updated_ms', ARGV[2], 'last_error', '',
  'reason', '', 'gateway_request_ids', '[]')
redis.call('PERSIST', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
local job_id = ARGV[1] .. '@' .. gen
-- Built as text, not with cjson, so the ms timestamp is never printed in exponent form.
local job = '{"t":1,"f":"process_event","a":[' .. cjson.encode(ARGV[1]) .. ',' .. gen
  .. '],"k":{},"et":' .. ARGV[2] .. '}'
redis.call('SET', KEYS[5] .. job_id, job, 'PX', ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[2], job_id)
-- Console indexes (service.storage.event_index)
local ix = redis.call('HMGET', KEYS[1], 'received_ms', 'type')
ix_move(KEYS[6], ARGV[1], 'dead_lettered', 'queued', ix[1])
redis.call('ZREM', KEYS[6] .. 'expiry', ARGV[1] .. ' ' .. (ix[2] or ''))
ix_history(KEYS[1], ARGV[2], 'queued', 0, gen, 'replayed')
return gen
"""

# Re-create a vanished arq job for an in-flight event (the sweep). ARGV: event id, generation, now, expiry, job
_REQUEUE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'processing' and state ~= 'retrying' then return 0 end
if redis.call('HGET', KEYS[1], 'generation') ~= ARGV[2] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[6])
redis.call('HSET', KEYS[1], 'state', 'queued', 'updated_ms', ARGV[3])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
-- Console indexes (service.storage.event_index)
local ix = redis.call('HMGET', KEYS[1], 'received_ms', 'attempts')
ix_move(KEYS[6], ARGV[1], state, 'queued', ix[1])
ix_history(KEYS[1], ARGV[3], 'queued', ix[2], ARGV[2], 'job re-created by the sweep')
return 1
"""


class ReplayRefused(Exception):
    """Only a dead-lettered event can be replayed."""


def _s(raw: dict[bytes, bytes], name: str, default: str = "") -> str:
    value = raw.get(name.encode())
    return value.decode("utf-8", "replace") if value is not None else default


@dataclass(frozen=True, slots=True)
class EventRecord:
    event_id: str
    type: str
    created: int
    state: str
    generation: int
    attempts: int
    received_ms: int
    updated_ms: int
    request_id: str
    secret_index: int
    last_error: str
    reason: str
    body: bytes = field(repr=False)
    gateway_request_ids: tuple[str, ...] = ()

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> EventRecord:
        return cls(
            event_id=_s(raw, "id"), type=_s(raw, "type"), created=int(_s(raw, "created", "0")),
            state=_s(raw, "state"), generation=int(_s(raw, "generation", "0")),
            attempts=int(_s(raw, "attempts", "0")), received_ms=int(_s(raw, "received_ms", "0")),
            updated_ms=int(_s(raw, "updated_ms", "0")), request_id=_s(raw, "request_id"),
            secret_index=int(_s(raw, "secret_index", "0")), last_error=_s(raw, "last_error"),
            reason=_s(raw, "reason"), body=raw.get(b"body", b""),
            gateway_request_ids=tuple(json.loads(_s(raw, "gateway_request_ids", "[]"))),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id, "type": self.type, "created": self.created, "state": self.state,
            "attempts": self.attempts, "generation": self.generation, "last_error": self.last_error or None,
            "reason": self.reason or None, "gateway_request_ids": list(self.gateway_request_ids),
            "received_ms": self.received_ms, "updated_ms": self.updated_ms, "request_id": self.request_id,
            "secret_index": self.secret_index,
        }


class Records:
    def __init__(self, redis: Redis, *, event_retention: int, dead_letter_retention: int, job_expiry_s: int,
                 scripts: Coalescer | None = None) -> None:
        self.redis = redis
        # Transitions of concurrent jobs share round trips (service.coalesce); handlers use the same coalescer.
        self.scripts = scripts if scripts is not None else Coalescer(redis)
        self._event_retention = event_retention
        self._dead_retention = dead_letter_retention
        self._job_expiry_ms = job_expiry_s * 1000
        self._start = self.scripts.script(INDEX_LUA + _START)
        self._finish = self.scripts.script(INDEX_LUA + _FINISH)
        self._add_request_id = self.scripts.script(_ADD_REQUEST_ID)
        self._replay = self.scripts.script(INDEX_LUA + _REPLAY)
        self._requeue = self.scripts.script(INDEX_LUA + _REQUEUE)

    async def get(self, event_id: str) -> EventRecord | None:
        raw = await self.redis.hgetall(keys.event(event_id))  # type: ignore[misc]
        return EventRecord.from_hash(raw) if raw else None

    async def start(self, event_id: str, generation: int, now_ms: int) -> EventRecord | int:
        """Mark processing and return the record (``attempts`` is this attempt's number), or a reason to
        skip: -1 the record is gone, -2 a replay superseded this generation, -3 it already finished."""
        result = await self._start(keys=[keys.event(event_id), keys.INFLIGHT, keys.CONSOLE_INDEX],
                                   args=[generation, now_ms, event_id])
        if isinstance(result, int):
            return result
        return EventRecord.from_hash(dict(zip(result[::2], result[1::2], strict=True)))

    async def _set(self, event_id: str, generation: int, now_ms: int, state: str, error: str, reason: str,
                   ttl: int, *, only_in_flight: bool = False, reset_attempts: bool = False) -> bool:
        result = await self._finish(
            keys=[keys.event(event_id), keys.INFLIGHT, keys.DEAD_LETTERS, keys.CONSOLE_INDEX],
            args=[generation, now_ms, event_id, state, error, reason, ttl, int(only_in_flight), int(reset_attempts)],
        )
        return bool(result)

    async def succeeded(self, event_id: str, generation: int, now_ms: int) -> bool:
        return await self._set(event_id, generation, now_ms, "succeeded", "", "", self._event_retention)

    async def retrying(self, event_id: str, generation: int, now_ms: int, error: str, *, progressed: bool = False
                       ) -> bool:
        """``progressed``: this attempt got somewhere (e.g. committed batches), so the attempt count starts
        over: ``attempts`` counts attempts since the last one that made progress."""
        return await self._set(event_id, generation, now_ms, "retrying", error, "", 0, reset_attempts=progressed)

    async def dead_lettered(self, event_id: str, generation: int, now_ms: int, reason: str, error: str) -> bool:
        return await self._set(event_id, generation, now_ms, "dead_lettered", error, reason, self._dead_retention)

    async def lost(self, event_id: str, generation: int, now_ms: int, error: str) -> bool:
        """The sweep's verdict on a job that vanished past the deadline: dead-letter as ``lost``, but only if
        the event is still in flight (a worker may have finished it since the sweep looked)."""
        return await self._set(event_id, generation, now_ms, "dead_lettered", error, "lost", self._dead_retention,
                               only_in_flight=True)

    async def add_request_id(self, event_id: str, request_id: str, idempotency_key: str = "") -> None:
        await self._add_request_id(keys=[keys.event(event_id)], args=[request_id, idempotency_key])

    async def replay(self, event_id: str, now_ms: int) -> int:
        """Re-queue a dead-lettered event under a new key generation; returns the generation."""
        gen = await self._replay(
            keys=[keys.event(event_id), keys.INFLIGHT, keys.DEAD_LETTERS, keys.ARQ_QUEUE, keys.ARQ_JOB,
                  keys.CONSOLE_INDEX],
            args=[event_id, now_ms, self._job_expiry_ms],
        )
        if not gen:
            msg = f"event {event_id} is not dead-lettered"
            raise ReplayRefused(msg)
        return int(gen)

    async def requeue_if_lost(self, event_id: str, generation: int, now_ms: int) -> bool:
        job_id = keys.job_id(event_id, generation)
        result = await self._requeue(
            keys=[keys.event(event_id), keys.ARQ_JOB + job_id, keys.ARQ_QUEUE, keys.ARQ_IN_PROGRESS + job_id,
                  keys.INFLIGHT, keys.CONSOLE_INDEX],
            args=[event_id, generation, now_ms, self._job_expiry_ms, arq_job_payload(event_id, generation, now_ms),
                  job_id],
        )
        return bool(result)

    async def dead_letters(self) -> list[EventRecord]:
        ids = await self.redis.zrange(keys.DEAD_LETTERS, 0, -1)
        records = [await self.get(i.decode()) for i in ids]
        return [r for r in records if r is not None]

    async def stale_inflight(self, older_than_ms: int) -> list[str]:
        ids = await self.redis.zrangebyscore(keys.INFLIGHT, "-inf", older_than_ms, start=0, num=1000)
        return [i.decode() for i in ids]
