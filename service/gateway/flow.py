"""Flow control toward the gateway, shared by every worker on one Redis: per-route rate and concurrency
limits, the pause a 429 asks for, and a circuit breaker.

Every HTTP attempt of ``GatewayClient`` first takes a ``Permit`` (``acquire``) and gives it back with the
outcome (``release``). ``acquire`` is one Lua script that answers "go now" or "wait N ms" from, in this
order: the route's breaker (open: the call is not sent at all), its 429 hold, its concurrency leases (a
sorted set of lease ids by expiry, so a crashed worker's lease simply expires) and its rate (GCRA without
burst: one key holding the next allowed call time). Nothing is reserved for a call that has to wait, so
the limit holds at the gateway whatever the number of workers. The scripts read Redis's clock (``TIME``),
so workers on hosts whose clocks differ still share one timeline.

No polling storm: inside one process only the oldest waiter of a limited route talks to Redis (an
``asyncio.Lock`` hands the turn over in arrival order), and it sleeps exactly until the moment the script
named; a full concurrency limit is re-checked when this process frees a lease, or after ``POLL_S`` for
leases freed elsewhere. Routes without limits skip the turn-taking.

A call never waits past the job's own deadline (``job_deadline``): when the wait would end later than
``margin_s`` before it, ``GatewayHeld`` is raised instead, a transient error the job layer turns into a
later retry that does not count as an attempt. The same error, with code ``circuit_open``, is what a call
gets while the breaker is open or while its one probe is out.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

from runinfra_webhooks.service.core.route_limits import RouteLimits
from runinfra_webhooks.service.gateway.backoff import backoff_delay
from runinfra_webhooks.service.gateway.client import (
    GatewayError,
    GatewayPermanentError,
    GatewayResponse,
    GatewayTransientError,
)
from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.coalesce import Coalescer

__all__ = [
    "CIRCUIT_OPEN",
    "HOLD_WAIT",
    "LIMIT_WAIT",
    "BreakerState",
    "FlowControl",
    "GatewayHeld",
    "Permit",
    "breaker_states",
    "job_deadline",
    "status_label",
]

CIRCUIT_OPEN: Final = "circuit_open"  # breaker open, or its probe is out: nothing was sent
LIMIT_WAIT: Final = "gateway_limit_wait"  # rate or concurrency would keep the call waiting past the deadline
HOLD_WAIT: Final = "gateway_hold_wait"  # a 429's pause would keep the call waiting past the deadline

POLL_S = 0.05  # a full concurrency limit freed by another process is seen within this
MAX_HOLD_S = 300.0  # a hostile Retry-After cannot stop a route for longer

# acquire verdicts
_GO, _HELD, _RATE, _FULL, _OPEN, _PROBING = range(6)

# KEYS: breaker, hold, rate, leases. ARGV: interval ms (0 = none), concurrency (0 = none), lease id, lease ms,
#       probe ms. Reply: {verdict, wait ms, probe (1/0), consecutive failures}.
_ACQUIRE = """
-- Redis's clock, not the worker's: every worker on every host measures the same intervals.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'state', 'open_until', 'probe_until', 'failures')
local state = b[1] or 'closed'
local probe = 0
if state == 'open' then
  local open_until = tonumber(b[2]) or 0
  if now < open_until then return {4, open_until - now, 0, 0} end
  probe = 1
elseif state == 'half_open' then
  local probe_until = tonumber(b[3]) or 0
  if now < probe_until then return {5, probe_until - now, 0, 0} end
  probe = 1
end
local hold = tonumber(redis.call('GET', KEYS[2]) or '0')
if hold > now then return {1, hold - now, 0, 0} end
local limit = tonumber(ARGV[2])
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if redis.call('ZCARD', KEYS[4]) >= limit then
    local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
    return {3, math.max(1, tonumber(first[2]) - now), 0, 0}
  end
end
local interval = tonumber(ARGV[1])
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[3]) or '0')
  if tat > now then return {2, tat - now, 0, 0} end
  redis.call('SET', KEYS[3], now + interval, 'PX', interval + 1000)
end
if limit > 0 then
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[4]), ARGV[3])
  redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[4]) + 1000)
end
if probe == 1 then
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe_until', now + tonumber(ARGV[5]))
end
return {0, 0, probe, tonumber(b[4]) or 0}
"""

# KEYS: breaker, hold, leases, routes set. ARGV: lease id ('' = none), kind (ok/fail/throttled/none),
#       hold ms, threshold, cooldown ms, probe (1/0), route. Reply: '' or the breaker's transition.
_RELEASE = """
-- Redis's clock, not the worker's: every worker on every host measures the same intervals.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[3], ARGV[1]) end
local kind = ARGV[2]
if kind == 'throttled' then
  local hold_ms = tonumber(ARGV[3])
  if hold_ms > 0 and now + hold_ms > tonumber(redis.call('GET', KEYS[2]) or '0') then
    redis.call('SET', KEYS[2], now + hold_ms, 'PX', hold_ms)
  end
  kind = 'ok'  -- the gateway answered: it is up, only busy
end
if kind == 'none' then return '' end
local b = redis.call('HMGET', KEYS[1], 'state', 'failures')
local state = b[1] or 'closed'
if kind == 'ok' and state == 'closed' and (tonumber(b[2]) or 0) == 0 then return '' end  -- nothing to change
redis.call('SADD', KEYS[4], ARGV[7])
if state == 'half_open' then
  if ARGV[6] ~= '1' then return '' end  -- only the probe decides
  if kind == 'ok' then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0)
    return 'closed'
  end
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', now + tonumber(ARGV[5]), 'failures', 0)
  return 'reopened'
end
if state == 'open' then return '' end  -- answers of calls sent before it opened change nothing
if kind == 'ok' then
  redis.call('HSET', KEYS[1], 'failures', 0)
  return ''
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if failures >= tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', now + tonumber(ARGV[5]), 'failures', 0)
  return 'opened'
end
return ''
"""

_deadline: ContextVar[float | None] = ContextVar("runinfra_gateway_deadline", default=None)


@contextlib.contextmanager
def job_deadline(seconds: float) -> Iterator[None]:
    """Within this block, gateway calls of this task give up waiting on limits ``seconds`` from now."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


class GatewayHeld(GatewayTransientError):
    """Not sent: the route's circuit is open, or its limits would keep the call waiting past the job's own
    deadline. Try again after ``retry_after`` seconds; this is not a failed attempt."""


@dataclass(frozen=True, slots=True)
class Permit:
    route: str
    lease: str  # '' when the route has no concurrency limit
    probe: bool  # this call decides whether the open circuit closes
    failures: int  # the route's consecutive transient failures when the permit was given


@dataclass(frozen=True, slots=True)
class BreakerState:
    route: str
    state: str  # closed, open, half_open
    failures: int
    open_until_ms: int


Transition = Callable[[str, str], Awaitable[None]]  # (route, "opened" | "closed")
Observer = Callable[[str, str, float], None]  # (route, status label, seconds) of every attempt


def _kind(outcome: GatewayResponse | GatewayError | None) -> str:
    """What an attempt's outcome says about the route's health."""
    if outcome is None:
        return "none"  # cancelled mid-call: we do not know
    if isinstance(outcome, GatewayResponse | GatewayPermanentError):
        return "ok"  # the gateway answered
    if outcome.status == 429:
        return "throttled"
    if outcome.status == 409:
        return "ok"  # our own key still in flight: the gateway works
    return "fail"


def status_label(outcome: GatewayResponse | GatewayError | None) -> str:
    """The ``status`` label of an attempt: the HTTP status, or what happened instead."""
    if outcome is None:
        return "cancelled"
    if outcome.status is not None:
        return str(outcome.status)
    return outcome.code.removeprefix("gateway_")


class FlowControl:
    """One per worker process (its ``asyncio`` state belongs to one event loop)."""

    def __init__(
        self,
        scripts: Coalescer,
        *,
        limits: Mapping[str, RouteLimits],
        breaker_threshold: int,
        breaker_cooldown: float,
        lease_s: float,
        margin_s: float,
        retry_base: float,
        retry_cap: float,
        on_transition: Transition | None = None,
        observe: Observer | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._acquire = scripts.script(_ACQUIRE)
        self._release = scripts.script(_RELEASE)
        self._limits = dict(limits)
        self._threshold = breaker_threshold
        self._cooldown_ms = round(breaker_cooldown * 1000)
        self._lease_ms = max(1000, round(lease_s * 1000))
        self._margin = margin_s
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._on_transition = on_transition
        self._observe = observe
        self._rng = rng or random.Random()  # noqa: S311 - spreading retries, not cryptography
        self._turns: dict[str, asyncio.Lock] = {}
        self._queued: Counter[str] = Counter()  # callers of each route waiting for their turn here
        self._call_s = 0.2  # a moving average of calls' duration, for the comeback estimate
        self._freed: dict[str, asyncio.Event] = {}

    async def acquire(self, route: str) -> Permit:
        """Wait for the route's limits; raise ``GatewayHeld`` when the call must not be sent now."""
        limits = self._limits.get(route, RouteLimits())
        if not limits.limited:
            return await self._until_go(route, limits)
        turn = self._turns.setdefault(route, asyncio.Lock())
        self._queued[route] += 1
        try:
            async with asyncio.timeout(self._remaining()):
                await turn.acquire()
        except TimeoutError:
            # Come back about when the calls queued here now will have gone (at the rate's spacing, or a call's
            # time per concurrency slot), so that a long queue is not re-run every second.
            per_call = max(limits.interval_ms / 1000, self._call_s / max(limits.concurrency, 1))
            later = max(1.0, self._queued[route] * per_call)
            msg = f"gateway {route} limits would hold this call past the job's deadline"
            raise GatewayHeld(msg, code=LIMIT_WAIT, retry_after=self._spread(later)) from None
        finally:
            self._queued[route] -= 1
        try:
            return await self._until_go(route, limits)
        finally:
            turn.release()

    async def release(self, permit: Permit, outcome: GatewayResponse | GatewayError | None, elapsed: float,
                      *, attempt: int = 1) -> None:
        """Give the permit back with the attempt's outcome (None: cancelled before an answer)."""
        route = permit.route
        self._call_s += 0.05 * (elapsed - self._call_s)
        if self._observe is not None:
            self._observe(route, status_label(outcome), elapsed)
        kind = _kind(outcome)
        if not permit.lease and not permit.probe and (kind == "none" or (kind == "ok" and permit.failures == 0)):
            return  # nothing to change: the common case costs no second round trip
        hold_ms = 0
        if kind == "throttled":
            assert isinstance(outcome, GatewayError)
            wait = outcome.retry_after
            if wait is None:
                wait = backoff_delay(attempt, base=self._retry_base, cap=self._retry_cap)
            hold_ms = round(min(wait, MAX_HOLD_S) * 1000)
        transition = await self._release(
            keys=[keys.flow_breaker(route), keys.flow_hold(route), keys.flow_leases(route), keys.FLOW_ROUTES],
            args=[permit.lease, kind, hold_ms, self._threshold, self._cooldown_ms, int(permit.probe),
                  route],
        )
        if permit.lease:
            self._freed.setdefault(route, asyncio.Event()).set()
        if isinstance(transition, bytes):
            transition = transition.decode()
        if transition in ("opened", "closed") and self._on_transition is not None:
            await self._on_transition(route, transition)

    # --- internals ----------------------------------------------------------------------------------
    async def _until_go(self, route: str, limits: RouteLimits) -> Permit:
        lease = uuid.uuid4().hex if limits.concurrency else ""
        probe_ms = self._lease_ms
        while True:
            verdict, wait_ms, probe, failures = await self._acquire(
                keys=[keys.flow_breaker(route), keys.flow_hold(route), keys.flow_rate(route),
                      keys.flow_leases(route)],
                args=[limits.interval_ms, limits.concurrency, lease, self._lease_ms, probe_ms],
            )
            if verdict == _GO:
                return Permit(route, lease, bool(probe), int(failures))
            wait = int(wait_ms) / 1000
            if verdict == _OPEN:
                msg = f"gateway {route} circuit is open"
                # Spread the comebacks so that the probe goes first and the rest do not arrive as one wave.
                spread = min(self._cooldown_ms / 2000, 5.0)
                raise GatewayHeld(msg, code=CIRCUIT_OPEN, retry_after=wait + self._rng.uniform(0.0, spread))
            if verdict == _PROBING:
                msg = f"gateway {route} circuit is half open and its probe is out"
                raise GatewayHeld(msg, code=CIRCUIT_OPEN, retry_after=self._spread(min(wait, 1.0)))
            if verdict == _FULL:
                wait = min(wait, POLL_S)
            remaining = self._remaining()
            if remaining is not None and wait > remaining:
                if verdict == _HELD:
                    msg = f"gateway {route} is paused by a 429 for {wait:.1f} s more"
                    raise GatewayHeld(msg, code=HOLD_WAIT, retry_after=wait)
                msg = f"gateway {route} limits would hold this call past the job's deadline"
                raise GatewayHeld(msg, code=LIMIT_WAIT, retry_after=self._spread(max(wait, 1.0)))
            if verdict == _FULL:
                await self._lease_freed(route, wait)
            else:
                await asyncio.sleep(wait)

    async def _lease_freed(self, route: str, timeout: float) -> None:
        freed = self._freed.setdefault(route, asyncio.Event())
        freed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await freed.wait()

    def _remaining(self) -> float | None:
        deadline = _deadline.get()
        if deadline is None:
            return None
        return max(0.0, deadline - self._margin - time.monotonic())

    def _spread(self, seconds: float) -> float:
        return seconds * self._rng.uniform(0.5, 1.5)


async def breaker_states(redis: Any) -> list[BreakerState]:
    """Every route's breaker that has ever recorded an outcome, for metrics and the CLI."""
    routes = sorted(r.decode() for r in await redis.smembers(keys.FLOW_ROUTES))
    out = []
    for route in routes:
        state, failures, open_until = await redis.hmget(keys.flow_breaker(route), "state", "failures", "open_until")
        out.append(BreakerState(route, (state or b"closed").decode(), int(failures or 0), int(open_until or 0)))
    return out
