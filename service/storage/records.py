"""The processing state of each event, kept in its Redis hash.

State moves queued -> processing -> (retrying -> processing)* -> succeeded | dead_lettered; replay moves a
dead-lettered event back to queued under a new generation. Every transition is one Lua script guarded by
the generation, so a stale job of an older generation can never overwrite a newer one's state.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from runinfra_webhooks.service.core.trace_context import new_traceparent, trace_id_of
from runinfra_webhooks.service.storage import arq_job, keys
from runinfra_webhooks.service.storage.coalesce import Coalescer
from runinfra_webhooks.service.storage.event_index import INDEX_LUA

__all__ = [
    "ADD_REQUEST_ID_SCRIPT", "DEAD_LETTER_PAGE", "FINISH_SCRIPT", "HANDLER_DONE_SCRIPT", "START_SCRIPT", "EventRecord",
    "Records", "ReplayRefused",
]

IN_FLIGHT = ("queued", "processing", "retrying")
DEAD_LETTER_PAGE = 1000
# Every field of a record but its body: what listings and replays read. 'id' first: None means no record.
_SUMMARY_FIELDS = ("id", "type", "created", "state", "generation", "attempts", "received_ms", "updated_ms",
                   "request_id", "secret_index", "last_error", "reason", "gateway_request_ids", "handlers_done",
                   "traceparent", "replay_traceparent")

# Every script below checks its arguments and the stored fields it relies on, and computes what it will
# write, before its first write: a script that fails (a corrupt field, a bad argument) has written nothing,
# and Redis refuses a script for lack of memory or a read-only replica only at its first write. Failures are
# error replies naming the script (see workers.retry: a script error is permanent, never retried).
_CHECKS = """
local function digits(v) return type(v) == 'string' and #v >= 1 and #v <= 18 and string.find(v, '^%d+$') ~= nil end
-- A counter the script adds to: small enough that Lua's doubles hold it exactly and print it without exponent.
local function counter(v) return digits(v) and #v <= 12 end
local function fail(what) return redis.error_reply('ERR ' .. SCRIPT .. ': ' .. what) end
"""


def _script(name: str, body: str, *, indexes: bool = False) -> str:
    """A script with its checks, and with the console's index helpers when it changes an event's state."""
    return f"local SCRIPT = '{name}'\n{_CHECKS}{INDEX_LUA if indexes else ''}{body}"


# KEYS: event, inflight, paused types, parked, console index prefix. ARGV: generation, now, event id
_START = _script("records.start", """
if not digits(ARGV[2]) then return fail('now is not a decimal integer') end
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if redis.call('HGET', KEYS[1], 'generation') ~= ARGV[1] then return -2 end
if state ~= 'queued' and state ~= 'processing' and state ~= 'retrying' then return -3 end
local attempts = redis.call('HGET', KEYS[1], 'attempts') or '0'
if not counter(attempts) then return fail('stored attempts is not a decimal integer') end
local ix = redis.call('HMGET', KEYS[1], 'type', 'received_ms', 'generation')
local event_type = ix[1] or ''
local paused = redis.call('SISMEMBER', KEYS[3], event_type) == 1 or redis.call('SISMEMBER', KEYS[3], '*') == 1
-- writes
if paused then
  -- A paused type: the event waits as queued, out of the in-flight index (so the sweep leaves it alone),
  -- until resume re-queues it. Nothing is attempted.
  redis.call('HSET', KEYS[1], 'state', 'queued', 'updated_ms', ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
  ix_move(KEYS[5], ARGV[3], state, 'queued', ix[2])
  return -4
end
local attempt = tostring(tonumber(attempts) + 1)
redis.call('HSET', KEYS[1], 'state', 'processing', 'updated_ms', ARGV[2], 'attempts', attempt)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
-- Console indexes (event_index.py)
ix_move(KEYS[5], ARGV[3], state, 'processing', ix[2])
ix_history(KEYS[1], ARGV[2], 'processing', attempt, ix[3], '')
-- The types offered by the console's filter (here rather than at ingest, whose budget is tighter).
if event_type ~= '' then redis.call('SADD', KEYS[5] .. 'types', event_type) end
-- The record comes back with the transition: the job needs it next, and this saves a round trip.
return redis.call('HGETALL', KEYS[1])
""", indexes=True)

# KEYS: event, inflight, dead, console index prefix.
# ARGV: generation, now, event id, new state, last error, reason, ttl (0 = none), only while in flight (1/0),
#       attempts: 1 = reset to 0, 2 = give this attempt back (it waited on flow control), 0 = keep
_FINISH = _script("records.finish", """
if not digits(ARGV[2]) then return fail('now is not a decimal integer') end
if not digits(ARGV[7]) then return fail('ttl is not a decimal integer') end
local target = ARGV[4]
if target ~= 'retrying' and target ~= 'succeeded' and target ~= 'dead_lettered' then return fail('unknown state') end
if redis.call('HGET', KEYS[1], 'generation') ~= ARGV[1] then return 0 end
if ARGV[8] == '1' then
  local state = redis.call('HGET', KEYS[1], 'state')
  if state ~= 'queued' and state ~= 'processing' and state ~= 'retrying' then return 0 end
end
-- The state this transition leaves, for the console's indexes.
local ix = redis.call('HMGET', KEYS[1], 'state', 'received_ms', 'attempts', 'type')
local attempts = ix[3] or '0'
if ARGV[9] == '2' and not counter(attempts) then return fail('stored attempts is not a decimal integer') end
-- writes
redis.call('HSET', KEYS[1], 'state', target, 'updated_ms', ARGV[2], 'last_error', ARGV[5], 'reason', ARGV[6])
if target == 'retrying' then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
else
  redis.call('ZREM', KEYS[2], ARGV[3])
end
if target == 'dead_lettered' then redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3]) end
if ARGV[7] ~= '0' then redis.call('EXPIRE', KEYS[1], ARGV[7]) end
if ARGV[9] == '1' then
  redis.call('HSET', KEYS[1], 'attempts', 0)
elseif ARGV[9] == '2' and tonumber(attempts) > 0 then
  redis.call('HSET', KEYS[1], 'attempts', tostring(tonumber(attempts) - 1))
end
-- Console indexes (event_index.py)
ix_move(KEYS[4], ARGV[3], ix[1], target, ix[2])
ix_history(KEYS[1], ARGV[2], target, attempts, ARGV[1], ARGV[5])
if ARGV[7] ~= '0' then ix_expires(KEYS[4], ARGV[3], ix[4], ARGV[2], ARGV[7]) end
return 1
""", indexes=True)

# ARGV: gateway request id, its idempotency key ('' when not known)
_ADD_REQUEST_ID = _script("records.add_request_id", """
local ok, ids = pcall(cjson.decode, redis.call('HGET', KEYS[1], 'gateway_request_ids') or '[]')
if not ok or type(ids) ~= 'table' then return fail('stored gateway_request_ids is not a JSON list') end
for _, v in ipairs(ids) do
  if type(v) ~= 'string' then return fail('stored gateway_request_ids holds a non-string') end
end
if #ids < 200 then table.insert(ids, ARGV[1]) end
local encoded = cjson.encode(ids)
-- The console shows each call with its key and the attempt it belongs to; kept across replays, capped.
local at = redis.call('HMGET', KEYS[1], 'generation', 'attempts')
local call = cjson.encode({request_id = ARGV[1], idempotency_key = ARGV[2] or '',
  generation = tonumber(at[1] or '0') or 0, attempt = tonumber(at[2] or '0') or 0})
local calls = redis.call('HGET', KEYS[1], 'gateway_calls')
if not calls then
  calls = call
elseif #calls < 16384 then
  calls = calls .. '\\n' .. call
end
-- writes
redis.call('HSET', KEYS[1], 'gateway_request_ids', encoded, 'gateway_calls', calls)
return #ids
""")

# One handler of several finished within this generation: a later attempt skips it.
_HANDLER_DONE = _script("records.handler_done", """
if redis.call('HGET', KEYS[1], 'generation') ~= ARGV[1] then return 0 end
local ok, done = pcall(cjson.decode, redis.call('HGET', KEYS[1], 'handlers_done') or '[]')
if not ok or type(done) ~= 'table' then return fail('stored handlers_done is not a JSON list') end
table.insert(done, ARGV[2])
local text = cjson.encode(done)
-- writes
redis.call('HSET', KEYS[1], 'handlers_done', text)
return 1
""")

# KEYS: event, inflight, dead, arq queue, arq job prefix, console index prefix. ARGV: event id, now, job expiry
# ms, job text before and after the generation (arq_job.py, the one owner of arq's format), replay traceparent
_REPLAY = _script("records.replay", """
if not digits(ARGV[2]) then return fail('now is not a decimal integer') end
if not digits(ARGV[3]) or ARGV[3] == '0' then return fail('job expiry is not a positive integer') end
if type(ARGV[4]) ~= 'string' or type(ARGV[5]) ~= 'string' then return fail('the job text is missing') end
if redis.call('HGET', KEYS[1], 'state') ~= 'dead_lettered' then return 0 end
local stored = redis.call('HGET', KEYS[1], 'generation') or '0'
if not counter(stored) then return fail('stored generation is not a decimal integer') end
local gen = tostring(tonumber(stored) + 1)
local job_id = ARGV[1] .. '@' .. gen
local job = ARGV[4] .. gen .. ARGV[5]
local ix = redis.call('HMGET', KEYS[1], 'received_ms', 'type')
-- writes
redis.call('HSET', KEYS[1], 'generation', gen, 'state', 'queued', 'attempts', 0, 'updated_ms', ARGV[2],
  'last_error', '', 'reason', '', 'gateway_request_ids', '[]', 'handlers_done', '[]',
  -- The replay's own trace; 'traceparent' keeps the delivery's, which the replay's attempts link to.
  'replay_traceparent', ARGV[6] or '')
redis.call('PERSIST', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('SET', KEYS[5] .. job_id, job, 'PX', ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[2], job_id)
-- Console indexes (event_index.py)
ix_move(KEYS[6], ARGV[1], 'dead_lettered', 'queued', ix[1])
redis.call('ZREM', KEYS[6] .. 'expiry', ARGV[1] .. ' ' .. (ix[2] or ''))
ix_history(KEYS[1], ARGV[2], 'queued', 0, gen, 'replayed')
return tonumber(gen)
""", indexes=True)

# Re-create a vanished arq job for an in-flight event (the sweep). KEYS: event, job, queue, in-progress,
# inflight, console index prefix. ARGV: event id, generation, now, expiry, job, job id
_REQUEUE = _script("records.requeue", """
if not digits(ARGV[3]) then return fail('now is not a decimal integer') end
if not digits(ARGV[4]) or ARGV[4] == '0' then return fail('job expiry is not a positive integer') end
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'processing' and state ~= 'retrying' then return 0 end
if redis.call('HGET', KEYS[1], 'generation') ~= ARGV[2] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local ix = redis.call('HMGET', KEYS[1], 'received_ms', 'attempts')
-- writes
redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[6])
redis.call('HSET', KEYS[1], 'state', 'queued', 'updated_ms', ARGV[3])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
-- Console indexes (event_index.py)
ix_move(KEYS[6], ARGV[1], state, 'queued', ix[1])
ix_history(KEYS[1], ARGV[3], 'queued', ix[2], ARGV[2], 'job re-created by the sweep')
return 1
""", indexes=True)


# Read-only, for listings: many records' fields in one command. A pipeline of HMGETs costs the client a
# packed command per record (most of a listing's time); here each record is one argument.
# ARGV: event key prefix, field count, the fields, then the event ids.
_SUMMARIES = """
local nf = tonumber(ARGV[2])
local fields = {}
for i = 1, nf do fields[i] = ARGV[2 + i] end
local out = {}
for i = 3 + nf, #ARGV do out[#out + 1] = redis.call('HMGET', ARGV[1] .. ARGV[i], unpack(fields)) end
return out
"""

# Read-only, for the sweep: per in-flight id, its generation ('' when the record is gone), whether its arq
# job or its in-progress key exists (0/1), and whether the job is in arq's queue (0/1). The job id is
# arq_job.job_id's format. ARGV: event key prefix, job prefix, in-progress prefix, queue key, event ids.
_INFLIGHT_CHECKS = """
local out = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local r = redis.call('HMGET', ARGV[1] .. id, 'id', 'generation')
  if not r[1] then
    out[#out + 1] = ''
    out[#out + 1] = 0
    out[#out + 1] = 0
  else
    local job = id .. '@' .. (r[2] or '0')
    out[#out + 1] = r[2] or '0'
    out[#out + 1] = math.min(redis.call('EXISTS', ARGV[2] .. job, ARGV[3] .. job), 1)
    out[#out + 1] = redis.call('ZSCORE', ARGV[4], job) and 1 or 0
  end
end
return out
"""


# Public for sorting errors (service.redis_errors): a runtime error names its script by SHA-1 only.
START_SCRIPT, FINISH_SCRIPT, ADD_REQUEST_ID_SCRIPT = _START, _FINISH, _ADD_REQUEST_ID
HANDLER_DONE_SCRIPT = _HANDLER_DONE


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
    handlers_done: tuple[str, ...] = ()  # handlers that finished in an earlier attempt of this generation
    traceparent: str = ""  # the delivery's trace (W3C), "" when it was not traced
    replay_traceparent: str = ""  # the latest replay's trace, "" before any replay

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
            handlers_done=tuple(json.loads(_s(raw, "handlers_done", "[]"))),
            traceparent=_s(raw, "traceparent"), replay_traceparent=_s(raw, "replay_traceparent"),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id, "type": self.type, "created": self.created, "state": self.state,
            "attempts": self.attempts, "generation": self.generation, "last_error": self.last_error or None,
            "reason": self.reason or None, "gateway_request_ids": list(self.gateway_request_ids),
            "received_ms": self.received_ms, "updated_ms": self.updated_ms, "request_id": self.request_id,
            "secret_index": self.secret_index, "handlers_done": list(self.handlers_done),
            "trace_id": trace_id_of(self.traceparent), "replay_trace_id": trace_id_of(self.replay_traceparent),
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
        self._start = self.scripts.script(_START)
        self._finish = self.scripts.script(_FINISH)
        self._add_request_id = self.scripts.script(_ADD_REQUEST_ID)
        self._replay = self.scripts.script(_REPLAY)
        self._handler_done = self.scripts.script(_HANDLER_DONE)
        self._requeue = self.scripts.script(_REQUEUE)
        self._summaries_script = redis.register_script(_SUMMARIES)
        self._inflight_script = redis.register_script(_INFLIGHT_CHECKS)

    async def get(self, event_id: str) -> EventRecord | None:
        raw = await self.redis.hgetall(keys.event(event_id))  # type: ignore[misc]
        return EventRecord.from_hash(raw) if raw else None

    async def start(self, event_id: str, generation: int, now_ms: int) -> EventRecord | int:
        """Mark processing and return the record (``attempts`` is this attempt's number), or a reason to
        skip: -1 the record is gone, -2 a replay superseded this generation, -3 it already finished, -4 its
        type is paused (the event is parked as queued until ``resume``)."""
        result = await self._start(keys=[keys.event(event_id), keys.INFLIGHT, keys.PAUSED_TYPES, keys.PARKED,
                                         keys.CONSOLE_INDEX],
                                   args=[generation, now_ms, event_id])
        if isinstance(result, int):
            return result
        return EventRecord.from_hash(dict(zip(result[::2], result[1::2], strict=True)))

    async def _set(self, event_id: str, generation: int, now_ms: int, state: str, error: str, reason: str,
                   ttl: int, *, only_in_flight: bool = False, reset_attempts: bool = False,
                   give_back_attempt: bool = False) -> bool:
        attempts = 1 if reset_attempts else 2 if give_back_attempt else 0
        result = await self._finish(
            keys=[keys.event(event_id), keys.INFLIGHT, keys.DEAD_LETTERS, keys.CONSOLE_INDEX],
            args=[generation, now_ms, event_id, state, error, reason, ttl, int(only_in_flight), attempts],
        )
        return bool(result)

    async def succeeded(self, event_id: str, generation: int, now_ms: int) -> bool:
        return await self._set(event_id, generation, now_ms, "succeeded", "", "", self._event_retention)

    async def retrying(self, event_id: str, generation: int, now_ms: int, error: str, *, progressed: bool = False,
                       counted: bool = True) -> bool:
        """``progressed``: this attempt got somewhere (e.g. committed batches), so the attempt count starts
        over: ``attempts`` counts attempts since the last one that made progress. ``counted=False``: the attempt
        only waited (open circuit, gateway limits) and is given back."""
        return await self._set(event_id, generation, now_ms, "retrying", error, "", 0, reset_attempts=progressed,
                               give_back_attempt=not counted)

    async def dead_lettered(self, event_id: str, generation: int, now_ms: int, reason: str, error: str) -> bool:
        return await self._set(event_id, generation, now_ms, "dead_lettered", error, reason, self._dead_retention)

    async def lost(self, event_id: str, generation: int, now_ms: int, error: str) -> bool:
        """The sweep's verdict on a job that vanished past the deadline: dead-letter as ``lost``, but only if
        the event is still in flight (a worker may have finished it since the sweep looked)."""
        return await self._set(event_id, generation, now_ms, "dead_lettered", error, "lost", self._dead_retention,
                               only_in_flight=True)

    async def add_request_id(self, event_id: str, request_id: str, idempotency_key: str = "") -> None:
        await self._add_request_id(keys=[keys.event(event_id)], args=[request_id, idempotency_key])

    async def handler_done(self, event_id: str, generation: int, name: str) -> None:
        await self._handler_done(keys=[keys.event(event_id)], args=[generation, name])

    async def replay(self, event_id: str, now_ms: int, traceparent: str = "") -> int:
        """Re-queue a dead-lettered event under a new key generation; returns the generation.

        ``traceparent``: the trace the replay starts (the replaying request's span, when traced); without one
        a fresh trace context is made, so a replay's attempts always share a new trace."""
        gen = await self._replay(
            keys=[keys.event(event_id), keys.INFLIGHT, keys.DEAD_LETTERS, keys.ARQ_QUEUE, keys.ARQ_JOB,
                  keys.CONSOLE_INDEX],
            args=[event_id, now_ms, self._job_expiry_ms, *arq_job.payload_around_generation(event_id, now_ms),
                  traceparent or new_traceparent()],
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
            args=[event_id, generation, now_ms, self._job_expiry_ms, arq_job.payload(event_id, generation, now_ms),
                  job_id],
        )
        return bool(result)

    async def dead_letter_snapshot(self) -> tuple[int, float | None]:
        """How many events are dead-lettered now, and the score (dead-lettering time) of the newest one: the
        upper bound that makes a paged pass see the set as it was when it started."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(keys.DEAD_LETTERS)
        pipe.zrange(keys.DEAD_LETTERS, -1, -1, withscores=True)
        count, newest = await pipe.execute()
        return int(count), (float(newest[0][1]) if newest else None)

    async def dead_letter_pages(self, *, page: int = DEAD_LETTER_PAGE,
                                upper: float | None = None) -> AsyncIterator[list[EventRecord]]:
        """The dead letters oldest first, ``page`` at a time, each page's records read in one round trip.

        The cursor is a score, exclusive, so it never depends on what the caller did with earlier pages: a
        replay removes an event from the set, and one replayed and dead-lettered again during the pass comes
        back with a newer score, past ``upper`` (default: the newest score when the pass starts), so no pass
        yields an event twice. A page never splits the events of one score (one millisecond): the tail
        with the page's last score is left to the next page, and a page that is one score throughout takes
        every event of that score, so a burst dead-lettered within one millisecond is one (larger) page.
        Records that vanished (expired) between the index and the read are left out, as they always were.
        """
        if upper is None:
            _, upper = await self.dead_letter_snapshot()
            if upper is None:
                return
        low = "-inf"
        while True:
            rows = await self.redis.zrangebyscore(keys.DEAD_LETTERS, low, upper, start=0, num=page,
                                                  withscores=True)
            if not rows:
                return
            if len(rows) == page:
                last = rows[-1][1]
                if rows[0][1] == last:
                    rows = await self.redis.zrangebyscore(keys.DEAD_LETTERS, last, last, withscores=True)
                else:
                    rows = [r for r in rows if r[1] != last]
            ids = [m.decode() for m, _ in rows]
            yield await self._summaries(ids)
            low = f"({float(rows[-1][1])!r}"

    async def _summaries(self, ids: list[str]) -> list[EventRecord]:
        """The records of ``ids`` without their bodies (a page of 1 MiB bodies would be 1 GB), one round trip."""
        rows = await self._summaries_script(args=[keys.event(""), len(_SUMMARY_FIELDS), *_SUMMARY_FIELDS, *ids])
        fields = [f.encode() for f in _SUMMARY_FIELDS]
        return [EventRecord.from_hash({f: v for f, v in zip(fields, values, strict=True) if v is not None})
                for values in rows if values[0] is not None]

    async def inflight_checks(self, ids: list[str]) -> list[tuple[int | None, bool, bool]]:
        """Per id, in one round trip: its generation (None: the record is gone), whether its arq job (or a
        worker's in-progress mark) exists, and whether the job is in arq's queue."""
        flat = await self._inflight_script(args=[keys.event(""), keys.ARQ_JOB, keys.ARQ_IN_PROGRESS, keys.ARQ_QUEUE,
                                                 *ids])
        return [(int(g) if g else None, bool(job), bool(queued))
                for g, job, queued in zip(flat[::3], flat[1::3], flat[2::3], strict=True)]

    async def stale_inflight(self, older_than_ms: int) -> list[str]:
        ids = await self.redis.zrangebyscore(keys.INFLIGHT, "-inf", older_than_ms, start=0, num=1000)
        return [i.decode() for i in ids]
