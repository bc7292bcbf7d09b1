"""Flow control toward the gateway on a real Redis: rate, concurrency leases, 429 holds, the breaker, deadlines.

Two ``FlowControl`` objects on one Redis stand for two worker processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import pytest
from redis.asyncio import Redis

from runinfra_webhooks.service.core.route_limits import RouteLimits
from runinfra_webhooks.service.gateway.client import GatewayClient, GatewayResponse, GatewayTransientError
from runinfra_webhooks.service.gateway.flow import (
    CIRCUIT_OPEN,
    HOLD_WAIT,
    LIMIT_WAIT,
    FlowControl,
    GatewayHeld,
    breaker_states,
    job_deadline,
)
from runinfra_webhooks.service.storage.coalesce import Coalescer
from runinfra_webhooks.service.storage.records import Records
from tests.queued import queue
from tests.stubserver import STUB_API_KEY, StubServer

ROUTE = "/audio/speech"
OK = GatewayResponse(200, b"{}", "application/json", "gw_1", False)


def unavailable() -> GatewayTransientError:
    return GatewayTransientError("down", code="gateway_unavailable", status=503)


def flow(redis: Redis, limits: Mapping[str, RouteLimits] | None = None, *, threshold: int = 5,
         cooldown: float = 30.0, transitions: list[tuple[str, str]] | None = None, lease_s: float = 5.0
         ) -> FlowControl:
    async def on_transition(route: str, what: str) -> None:
        if transitions is not None:
            transitions.append((route, what))

    return FlowControl(Coalescer(redis), limits=limits or {}, breaker_threshold=threshold,
                       breaker_cooldown=cooldown, lease_s=lease_s, margin_s=0.0, retry_base=0.1, retry_cap=1.0,
                       on_transition=on_transition)


async def test_rate_limit_spaces_calls_of_several_workers(redis: Redis) -> None:
    """At 20/s, twelve calls from two workers are granted at least 50 ms apart, never more in a window."""
    limits = {ROUTE: RouteLimits(interval_ms=50)}
    a, b = flow(redis, limits), flow(redis, limits)
    granted: list[float] = []

    async def call(fc: FlowControl) -> None:
        permit = await fc.acquire(ROUTE)
        granted.append(time.monotonic())
        await fc.release(permit, OK, 0.0)

    started = time.monotonic()
    await asyncio.gather(*(call(a if i % 2 else b) for i in range(12)))
    assert time.monotonic() - started >= 0.5
    granted.sort()
    for i, t in enumerate(granted):
        assert sum(1 for u in granted[i:] if u - t < 0.25) <= 6


async def test_concurrency_limit_holds_across_workers_and_freed_leases_wake_waiters(redis: Redis) -> None:
    """With 2 concurrent allowed, eight 50 ms calls from two workers never overlap by more than 2."""
    limits = {ROUTE: RouteLimits(concurrency=2)}
    a, b = flow(redis, limits), flow(redis, limits)
    busy = peak = 0

    async def call(fc: FlowControl) -> None:
        nonlocal busy, peak
        permit = await fc.acquire(ROUTE)
        busy += 1
        peak = max(peak, busy)
        await asyncio.sleep(0.05)
        busy -= 1
        await fc.release(permit, OK, 0.05)

    started = time.monotonic()
    await asyncio.gather(*(call(a if i % 2 else b) for i in range(8)))
    assert peak == 2
    assert time.monotonic() - started < 1.5
    assert await redis.zcard("rwh:flow:/audio/speech:leases") == 0


async def test_lease_of_a_caller_that_never_returned_expires(redis: Redis) -> None:
    """A worker that died holding a lease blocks its slot only until the lease expires."""
    limits = {ROUTE: RouteLimits(concurrency=1)}
    crashed, alive = flow(redis, limits, lease_s=1.0), flow(redis, limits, lease_s=1.0)
    await crashed.acquire(ROUTE)  # never released
    started = time.monotonic()
    permit = await alive.acquire(ROUTE)
    assert 0.8 < time.monotonic() - started < 2.0
    await alive.release(permit, OK, 0.0)


async def test_wait_longer_than_the_job_deadline_defers_at_once(redis: Redis) -> None:
    """A call whose slot comes after the job's deadline is not waited for: GatewayHeld, retry later."""
    fc = flow(redis, {ROUTE: RouteLimits(interval_ms=60_000)})
    await fc.release(await fc.acquire(ROUTE), OK, 0.0)
    started = time.monotonic()
    with job_deadline(0.5), pytest.raises(GatewayHeld) as caught:
        await fc.acquire(ROUTE)
    assert time.monotonic() - started < 0.3
    assert caught.value.code == LIMIT_WAIT
    assert caught.value.retry_after is not None and caught.value.retry_after > 0


async def test_429_holds_the_route_for_every_worker_until_retry_after(redis: Redis) -> None:
    """After one worker's 429 with Retry-After, another worker's call waits that long before it goes."""
    a, b = flow(redis), flow(redis)
    throttled = GatewayTransientError("busy", code="gateway_rate_limited", status=429, retry_after=0.6)
    await a.release(await a.acquire(ROUTE), throttled, 0.0)
    with job_deadline(0.2), pytest.raises(GatewayHeld) as caught:
        await b.acquire(ROUTE)
    assert caught.value.code == HOLD_WAIT
    started = time.monotonic()
    await b.acquire(ROUTE)
    assert 0.3 < time.monotonic() - started < 1.0
    assert await breaker_states(redis) == []  # a 429 is not a breaker failure: nothing recorded


async def test_breaker_opens_after_consecutive_failures_and_one_probe_closes_it(redis: Redis) -> None:
    """Three 503s open the circuit (nothing goes out), after the cooldown one probe goes, and its success closes."""
    transitions: list[tuple[str, str]] = []
    a, b = flow(redis, threshold=3, cooldown=0.4, transitions=transitions), flow(redis, threshold=3, cooldown=0.4)
    for fc in (a, b, a):
        await fc.release(await fc.acquire(ROUTE), unavailable(), 0.0)
    assert transitions == [(ROUTE, "opened")]
    with pytest.raises(GatewayHeld) as caught:
        await b.acquire(ROUTE)
    assert caught.value.code == CIRCUIT_OPEN
    assert caught.value.retry_after is not None and caught.value.retry_after <= 0.4 + 0.2 + 0.05
    await asyncio.sleep(0.45)
    probe = await a.acquire(ROUTE)
    assert probe.probe
    with pytest.raises(GatewayHeld, match="probe"):
        await b.acquire(ROUTE)
    await a.release(probe, OK, 0.0)
    assert transitions == [(ROUTE, "opened"), (ROUTE, "closed")]
    assert not (await b.acquire(ROUTE)).probe
    assert [s.state for s in await breaker_states(redis)] == ["closed"]


async def test_failed_probe_reopens_the_circuit_without_a_second_alert(redis: Redis) -> None:
    """A probe that fails opens the circuit for another cooldown; only the first opening is announced."""
    transitions: list[tuple[str, str]] = []
    fc = flow(redis, threshold=1, cooldown=0.3, transitions=transitions)
    await fc.release(await fc.acquire(ROUTE), unavailable(), 0.0)
    await asyncio.sleep(0.35)
    probe = await fc.acquire(ROUTE)
    await fc.release(probe, unavailable(), 0.0)
    with pytest.raises(GatewayHeld):
        await fc.acquire(ROUTE)
    assert transitions == [(ROUTE, "opened")]
    assert [s.state for s in await breaker_states(redis)] == ["open"]


async def test_a_success_or_a_429_resets_the_consecutive_failures(redis: Redis) -> None:
    """Failures must be consecutive: an answer in between (a 429 too: the gateway is up) starts the count over."""
    fc = flow(redis, threshold=3)
    throttled = GatewayTransientError("busy", code="gateway_rate_limited", status=429, retry_after=0.0)
    for outcome in (unavailable(), unavailable(), OK, unavailable(), unavailable(), throttled, unavailable()):
        await fc.release(await fc.acquire(ROUTE), outcome, 0.0)
    assert [(s.state, s.failures) for s in await breaker_states(redis)] == [("closed", 1)]


async def test_client_sends_nothing_once_the_circuit_is_open(redis: Redis, stub: StubServer) -> None:
    """Against a gateway answering 503, the client stops at the threshold: later attempts are never sent."""
    stub.set_faults(route="/v1/audio/speech", rates={"503": 1.0})
    fc = flow(redis, threshold=3)
    client = GatewayClient(stub.base_url, STUB_API_KEY, timeout=5, max_connections=4, max_attempts=10,
                           retry_base=0.01, retry_cap=0.02, flow=fc)
    try:
        with pytest.raises(GatewayHeld) as caught:
            await client.post(ROUTE, {"model": "m", "input": "hi", "voice": "v"}, idempotency_key="k-open")
        assert caught.value.code == CIRCUIT_OPEN
        with pytest.raises(GatewayHeld):
            await client.post(ROUTE, {"model": "m", "input": "hi", "voice": "v"}, idempotency_key="k-open-2")
    finally:
        await client.aclose()
    assert len(stub.calls()) == 3


async def test_client_waits_out_a_429_in_the_permit_not_in_its_own_sleep(redis: Redis, stub: StubServer) -> None:
    """With flow control the client does not sleep after a 429: the next permit waits for the route's hold."""
    stub.set_faults(route="/v1/audio/speech", script=[429], retry_after=0.4)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    client = GatewayClient(stub.base_url, STUB_API_KEY, timeout=5, max_connections=4, max_attempts=3,
                           retry_base=0.01, retry_cap=5.0, sleep=sleep, flow=flow(redis))
    try:
        response = await client.post(ROUTE, {"model": "m", "input": "hi", "voice": "v"}, idempotency_key="k-429")
    finally:
        await client.aclose()
    first, second = stub.calls()
    assert response.status == 200 and slept == []
    assert second["arrived"] - first["answered"] >= 0.35


async def test_an_attempt_that_only_waited_is_given_back(redis: Redis) -> None:
    """retrying(counted=False) returns the attempt the job start counted: waiting is not failing."""
    records = Records(redis, event_retention=600, dead_letter_retention=600, job_expiry_s=600)
    await queue(redis, "transcription.completed", "evt_w1")
    for _ in range(3):
        await records.start("evt_w1", 0, 1)
        await records.retrying("evt_w1", 0, 2, CIRCUIT_OPEN, counted=False)
    await records.start("evt_w1", 0, 3)
    await records.retrying("evt_w1", 0, 4, "gateway_unavailable status=503")
    record = await records.get("evt_w1")
    assert record is not None and (record.state, record.attempts, record.last_error) == (
        "retrying", 1, "gateway_unavailable status=503")
