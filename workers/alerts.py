"""Operator alerts: events shaped like RunInfra's envelope, signed with our own ``runinfra-signature`` scheme
under ``RUNINFRA_ALERT_SECRET``, POSTed to ``RUNINFRA_ALERT_URL`` (so another runinfra-webhooks, or anything
using ``runinfra_webhooks.Webhook``, can receive them).

Types: ``alert.event_dead_lettered`` (data: event_id, event_type, reason), ``alert.circuit_opened`` and
``alert.circuit_closed`` (data: route), ``alert.backlog_stale`` (data: oldest_queued_age_seconds). Every
alert's data also carries ``suppressed``.

Durable and shared by all workers, all in Redis:

- **Storm bound.** A gate per (type, subject: the event type, the route, or ``queue``) lets one alert out per
  ``RUNINFRA_ALERT_COOLDOWN``; the ones in between are counted. When the window ends with some counted,
  the newest of them goes out with ``suppressed`` = how many others it stands for, so the alerts received
  plus their ``suppressed`` add up to every occurrence.
- **Outbox.** An alert is written once with its id and body, then delivered from a sorted set by due time:
  a failed POST is retried with full-jitter backoff (capped at ``RUNINFRA_ALERT_RETRY_CAP``) under the same
  id, for up to 7 days. Each send is signed afresh, so the receiver's timestamp tolerance holds.
- **Dead letters** are found by reading the dead-letter index (whoever parked them: a job, the sweep, or the
  receiver for an invalid payload), each alerted once per generation.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

import httpx
import structlog
from redis.asyncio import Redis

from runinfra_webhooks.service.core.signature import sign
from runinfra_webhooks.service.gateway.backoff import backoff_delay
from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.coalesce import Coalescer

__all__ = [
    "BACKLOG_STALE",
    "CIRCUIT_CLOSED",
    "CIRCUIT_OPENED",
    "EVENT_DEAD_LETTERED",
    "Alerts",
    "oldest_queued_age",
]

EVENT_DEAD_LETTERED: Final = "alert.event_dead_lettered"
CIRCUIT_OPENED: Final = "alert.circuit_opened"
CIRCUIT_CLOSED: Final = "alert.circuit_closed"
BACKLOG_STALE: Final = "alert.backlog_stale"

_KEEP_S = 7 * 86_400
_CLAIM_MS = 30_000  # a claimed alert is not picked up by another worker for this long
_DEAD_LAG_MS = 5_000  # dead letters this recent are re-read (a lagging clock may stamp them late)
_BATCH = 50

log = structlog.get_logger("workers.alerts")

# emit(gate, gates_due, outbox, alert key prefix, type, data JSON, now ms, cooldown ms, id): 1 written, 0 counted
_EMIT_FN = """
local function emit(gate, due, outbox, prefix, atype, data, now, cooldown, id, keep)
  local last = tonumber(redis.call('HGET', gate, 'last_ms') or '-1')
  if last >= 0 and now - last < cooldown then
    redis.call('HINCRBY', gate, 'suppressed', 1)
    redis.call('HSET', gate, 'data', data, 'type', atype)
    redis.call('EXPIRE', gate, keep)
    redis.call('ZADD', due, last + cooldown, gate)
    return 0
  end
  local suppressed = tonumber(redis.call('HGET', gate, 'suppressed') or '0')
  redis.call('HSET', gate, 'last_ms', now, 'suppressed', 0, 'data', '', 'type', atype)
  redis.call('EXPIRE', gate, keep)
  redis.call('ZREM', due, gate)
  local body = cjson.decode(data)
  body['suppressed'] = suppressed
  local envelope = cjson.encode({id = id, object = 'event', type = atype, created = math.floor(now / 1000),
                                 data = body})
  redis.call('HSET', prefix .. id, 'body', envelope, 'attempts', 0, 'created_ms', now)
  redis.call('EXPIRE', prefix .. id, keep)
  redis.call('ZADD', outbox, now, id)
  return 1
end
"""

# KEYS: gate, gates due, outbox. ARGV: alert key prefix, type, data, now, cooldown ms, id, keep s
_EMIT = _EMIT_FN + """
return emit(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6],
            tonumber(ARGV[7]))
"""

# Windows that ended holding suppressed alerts: the newest of them goes out for the rest.
# KEYS: gates due, outbox. ARGV: alert key prefix, now, cooldown ms, keep s, limit
_FLUSH = _EMIT_FN + """
local now = tonumber(ARGV[2])
local sent = 0
for _, gate in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))) do
  redis.call('ZREM', KEYS[1], gate)
  local g = redis.call('HMGET', gate, 'suppressed', 'data', 'type')
  local n = tonumber(g[1] or '0')
  if n > 0 and g[2] and g[2] ~= '' then
    redis.call('HSET', gate, 'suppressed', n - 1, 'last_ms', -1)
    local id = 'alt_' .. string.sub(redis.sha1hex(gate .. '|' .. now .. '|' .. n), 1, 32)
    sent = sent + emit(gate, KEYS[1], KEYS[2], ARGV[1], g[3], g[2], now, tonumber(ARGV[3]), id, tonumber(ARGV[4]))
  end
end
return sent
"""

# New dead letters, each alerted once per generation.
# KEYS: dead index, cursor, gates due, outbox. ARGV: alert key prefix, now, cooldown ms, keep s, limit, event key
# prefix, seen key prefix, gate key prefix, lag ms
_DEAD_SCAN = _EMIT_FN + """
local now = tonumber(ARGV[2])
-- The first scan looks a minute back, not at every dead letter parked before alerts were turned on.
local cursor = tonumber(redis.call('GET', KEYS[2]) or (now - 60000))
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], cursor, '+inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[5]))
local newest = cursor
local sent = 0
for i = 1, #rows, 2 do
  local event_id = rows[i]
  local score = tonumber(rows[i + 1])
  if score > newest then newest = score end
  local e = redis.call('HMGET', ARGV[6] .. event_id, 'type', 'reason', 'generation')
  if e[1] and redis.call('SET', ARGV[7] .. event_id .. ':' .. (e[3] or '0'), '1', 'NX', 'EX', 86400) then
    local data = cjson.encode({event_id = event_id, event_type = e[1], reason = e[2] or ''})
    local id = 'alt_' .. string.sub(redis.sha1hex('dead|' .. event_id .. '|' .. (e[3] or '0')), 1, 32)
    sent = sent + emit(ARGV[8] .. 'alert.event_dead_lettered:' .. e[1], KEYS[3], KEYS[4], ARGV[1],
                       'alert.event_dead_lettered', data, now, tonumber(ARGV[3]), id, tonumber(ARGV[4]))
  end
end
redis.call('SET', KEYS[2], math.min(newest, now - tonumber(ARGV[9])))
return sent
"""

# Take due alerts for delivery (they come due again later if this worker dies). KEYS: outbox. ARGV: now, claim
# ms, limit, alert key prefix. Reply: id, body, attempts, ...
_CLAIM = """
local now = tonumber(ARGV[1])
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))) do
  local a = redis.call('HMGET', ARGV[4] .. id, 'body', 'attempts')
  if a[1] then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    table.insert(out, id)
    table.insert(out, a[1])
    table.insert(out, a[2] or '0')
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""

# Since when the oldest waiting event has waited (ms): the oldest runnable job no worker is running yet, or the
# oldest event parked by a pause (since it was received). KEYS: arq queue, parked. ARGV: now, in-progress
# prefix, limit, event key prefix.
_OLDEST = """
local oldest = false
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
for i = 1, #rows, 2 do
  if redis.call('EXISTS', ARGV[2] .. rows[i]) == 0 then
    oldest = tonumber(rows[i + 1])
    break
  end
end
local parked = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if parked[1] then
  local received = tonumber(redis.call('HGET', ARGV[4] .. parked[1], 'received_ms') or parked[2])
  if not oldest or received < oldest then oldest = received end
end
return oldest
"""


@dataclass(frozen=True, slots=True)
class _Claimed:
    alert_id: str
    body: bytes
    attempts: int


class Alerts:
    """One per worker process. ``enabled`` is false without ``RUNINFRA_ALERT_URL``: then nothing is written."""

    def __init__(self, redis: Redis, scripts: Coalescer, *, url: str | None, secret: str | None, cooldown: float,
                 backlog_age: float, retry_cap: float, timeout: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None, rng: random.Random | None = None) -> None:
        self._redis = redis
        self._url = url
        self._secret = secret or ""
        self._cooldown_ms = round(cooldown * 1000)
        self._backlog_ms = round(backlog_age * 1000)
        self._retry_cap = retry_cap
        self._rng = rng or random.Random()  # noqa: S311 - retry jitter, not cryptography
        self._emit = scripts.script(_EMIT)
        self._flush = scripts.script(_FLUSH)
        self._dead_scan = scripts.script(_DEAD_SCAN)
        self._claim = scripts.script(_CLAIM)
        self._oldest = scripts.script(_OLDEST)
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=False) if url else None

    @property
    def enabled(self) -> bool:
        return self._http is not None

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def emit(self, alert_type: str, subject: str, data: dict[str, Any], *, now_ms: int | None = None) -> bool:
        """Queue one alert, or count it into the next one of its kind; True when queued."""
        if not self.enabled:
            return False
        now = _now_ms() if now_ms is None else now_ms
        written = await self._emit(
            keys=[keys.alert_gate(alert_type, subject), keys.ALERT_GATES_DUE, keys.ALERT_OUTBOX],
            args=[keys.alert(""), alert_type, json.dumps(data, separators=(",", ":")), now, self._cooldown_ms,
                  f"alt_{uuid.uuid4().hex}", _KEEP_S],
        )
        return bool(written)

    async def circuit(self, route: str, transition: str) -> None:
        """The breaker's hook: ``opened`` / ``closed``."""
        alert_type = CIRCUIT_OPENED if transition == "opened" else CIRCUIT_CLOSED
        await self.emit(alert_type, route, {"route": route})

    async def tick(self, *, now_ms: int | None = None) -> dict[str, int]:
        """One round of the worker's alert loop: find new dead letters, release ended windows, check the
        backlog, and deliver what is due. Returns counts for logs and tests."""
        if not self.enabled:
            return {}
        now = _now_ms() if now_ms is None else now_ms
        dead = await self._dead_scan(
            keys=[keys.DEAD_LETTERS, keys.ALERT_DEAD_CURSOR, keys.ALERT_GATES_DUE, keys.ALERT_OUTBOX],
            args=[keys.alert(""), now, self._cooldown_ms, _KEEP_S, 1000, keys.event(""), keys.alert_dead_seen("", "")
                  .removesuffix(":"), keys.alert_gate("", "").removesuffix(":"), _DEAD_LAG_MS],
        )
        flushed = await self._flush(keys=[keys.ALERT_GATES_DUE, keys.ALERT_OUTBOX],
                                    args=[keys.alert(""), now, self._cooldown_ms, _KEEP_S, 100])
        age = await oldest_queued_age(self._redis, now_ms=now, scripts=self._oldest)
        stale = 0
        if age is not None and age * 1000 > self._backlog_ms:
            stale = int(await self.emit(BACKLOG_STALE, "queue", {"oldest_queued_age_seconds": round(age, 1)},
                                        now_ms=now))
        delivered, failed = await self.deliver(now_ms=now)
        return {"dead_lettered": int(dead), "flushed": int(flushed), "backlog_stale": stale,
                "delivered": delivered, "failed": failed}

    async def deliver(self, *, now_ms: int | None = None) -> tuple[int, int]:
        """POST every due alert once; (delivered, failed and rescheduled)."""
        if self._http is None:
            return 0, 0
        now = _now_ms() if now_ms is None else now_ms
        raw = await self._claim(keys=[keys.ALERT_OUTBOX], args=[now, _CLAIM_MS, _BATCH, keys.alert("")])
        claimed = [_Claimed(raw[i].decode(), raw[i + 1], int(raw[i + 2])) for i in range(0, len(raw), 3)]
        results = await asyncio.gather(*(self._post(c) for c in claimed))
        delivered = sum(results)
        return delivered, len(results) - delivered

    async def _post(self, alert: _Claimed) -> bool:
        assert self._http is not None and self._url is not None
        headers = {"content-type": "application/json",
                   "runinfra-signature": sign(alert.body, self._secret, int(time.time()))}
        status: int | None = None
        try:
            response = await self._http.post(self._url, content=alert.body, headers=headers)
            status = response.status_code
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        else:
            if response.is_success:
                pipe = self._redis.pipeline(transaction=False)
                pipe.zrem(keys.ALERT_OUTBOX, alert.alert_id)
                pipe.delete(keys.alert(alert.alert_id))
                await pipe.execute()
                log.info("alert.delivered", alert_id=alert.alert_id, status=status, attempts=alert.attempts + 1)
                return True
            error = f"status {status}"
        attempts = alert.attempts + 1
        delay = backoff_delay(attempts, base=1.0, cap=self._retry_cap, rng=self._rng)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(keys.alert(alert.alert_id), "attempts", str(attempts))
        pipe.zadd(keys.ALERT_OUTBOX, {alert.alert_id: _now_ms() + round(delay * 1000)}, xx=True)
        await pipe.execute()
        log.warning("alert.failed", alert_id=alert.alert_id, error=error, attempts=attempts, retry_in=round(delay, 2))
        return False


async def oldest_queued_age(redis: Redis, *, now_ms: int, scripts: Any = None) -> float | None:
    """Seconds the oldest waiting event has waited: the oldest runnable job not yet running, or the oldest
    event held by a pause (a paused backlog is a backlog too); None when nothing waits."""
    script = scripts if scripts is not None else redis.register_script(_OLDEST)
    score = await script(keys=[keys.ARQ_QUEUE, keys.PARKED], args=[now_ms, keys.ARQ_IN_PROGRESS, 100, keys.event("")])
    if score is None:
        return None
    return max(0.0, (now_ms - float(score)) / 1000)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
