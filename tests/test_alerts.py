"""Operator alerts on a real Redis to a real HTTP endpoint: signed envelopes, storm bound, retries, sources."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis

from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.coalesce import Coalescer
from runinfra_webhooks.service.storage.records import Records
from runinfra_webhooks.workers.alerts import BACKLOG_STALE, CIRCUIT_OPENED, EVENT_DEAD_LETTERED, Alerts
from tests.alert_sink import AlertSink, alert_sink
from tests.queued import queue
from tests.redis_server import as_async_db


@pytest.fixture
def sink() -> Iterator[AlertSink]:
    with alert_sink() as s:
        yield s


def alerts(redis: Redis, sink: AlertSink, *, cooldown: float = 300.0, backlog_age: float = 300.0) -> Alerts:
    return Alerts(redis, Coalescer(redis), url=sink.url, secret=sink.secret, cooldown=cooldown,
                  backlog_age=backlog_age, retry_cap=0.2)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_alert_is_a_signed_envelope_any_receiver_can_verify(redis: Redis, sink: AlertSink) -> None:
    """A circuit alert arrives as id/type/created/data, signed under RUNINFRA_ALERT_SECRET."""
    a = alerts(redis, sink)
    await a.circuit("/audio/speech", "opened")
    assert (await a.tick())["delivered"] == 1
    [(body, headers)] = sink.posts
    assert sink.verified(body, headers)
    alert = json.loads(body)
    assert alert["type"] == CIRCUIT_OPENED and alert["object"] == "event"
    assert alert["id"].startswith("alt_") and abs(alert["created"] - time.time()) < 5
    assert alert["data"] == {"route": "/audio/speech", "suppressed": 0}
    assert await redis.zcard(keys.ALERT_OUTBOX) == 0
    await a.aclose()


async def test_storm_sends_one_alert_per_window_and_counts_the_rest(redis: Redis, sink: AlertSink) -> None:
    """50 alerts of one kind within a window: the first goes, then one for the other 49 with suppressed=48."""
    a = alerts(redis, sink, cooldown=0.5)
    start = now_ms()
    for i in range(50):
        await a.emit(EVENT_DEAD_LETTERED, "transcription.completed",
                     {"event_id": f"evt_{i}", "event_type": "transcription.completed", "reason": "x"}, now_ms=start)
    await a.emit(CIRCUIT_OPENED, "/embeddings", {"route": "/embeddings"}, now_ms=start)  # another kind: own window
    await a.tick(now_ms=start + 100)
    await a.tick(now_ms=start + 600)
    got = sink.accepted()
    dead = [g for g in got if g["type"] == EVENT_DEAD_LETTERED]
    assert [d["data"]["event_id"] for d in dead] == ["evt_0", "evt_49"]
    assert [d["data"]["suppressed"] for d in dead] == [0, 48]
    assert sum(1 + d["data"]["suppressed"] for d in dead) == 50
    assert [g["type"] for g in got].count(CIRCUIT_OPENED) == 1
    await a.aclose()


async def test_failed_deliveries_are_retried_under_the_same_id(redis: Redis, sink: AlertSink) -> None:
    """While the endpoint is down the alert waits in the outbox; once it is back it arrives, id unchanged."""
    a = alerts(redis, sink)
    sink.down = True
    await a.circuit("/chat/completions", "closed")
    for _ in range(3):
        await a.tick()
        await asyncio.sleep(0.25)
    assert len(sink.posts) >= 2 and sink.accepted() == []
    sink.down = False
    await asyncio.sleep(0.25)
    await a.tick()
    ids = {json.loads(body)["id"] for body, _ in sink.posts}
    assert len(ids) == 1
    assert [g["id"] for g in sink.accepted()] == list(ids)
    assert await redis.zcard(keys.ALERT_OUTBOX) == 0
    await a.aclose()


async def test_dead_letters_in_the_index_are_alerted_once(redis: Redis, sink: AlertSink) -> None:
    """An event dead-lettered by anyone is found in the dead-letter index and alerted exactly once."""
    await queue(redis, "transcription.completed", "evt_dl1")
    records = Records(redis, event_retention=600, dead_letter_retention=600, job_expiry_s=600)
    await records.start("evt_dl1", 0, now_ms())
    await records.dead_lettered("evt_dl1", 0, now_ms(), "gateway_invalid_request_error", "400")
    a, b = alerts(redis, sink), alerts(redis, sink)  # two workers
    await a.tick()
    await b.tick()
    await a.tick()
    [alert] = sink.accepted()
    assert alert["type"] == EVENT_DEAD_LETTERED
    assert alert["data"] == {"event_id": "evt_dl1", "event_type": "transcription.completed",
                             "reason": "gateway_invalid_request_error", "suppressed": 0}
    await a.aclose()
    await b.aclose()


async def test_stale_backlog_is_alerted_with_the_oldest_age(redis: Redis, sink: AlertSink) -> None:
    """A runnable job waiting longer than RUNINFRA_ALERT_BACKLOG_AGE raises alert.backlog_stale."""
    a = alerts(redis, sink, backlog_age=5)
    await redis.zadd(keys.ARQ_QUEUE, {"evt_old@0": now_ms() - 8_000, "evt_new@0": now_ms()})
    await redis.set(keys.ARQ_IN_PROGRESS + "evt_running@0", "1")
    await redis.zadd(keys.ARQ_QUEUE, {"evt_running@0": now_ms() - 60_000})  # running: not a backlog
    await a.tick()
    [alert] = sink.accepted()
    assert alert["type"] == BACKLOG_STALE
    assert 7.5 < alert["data"]["oldest_queued_age_seconds"] < 10
    await a.aclose()


async def test_events_held_by_a_pause_count_as_a_stale_backlog(redis: Redis, sink: AlertSink) -> None:
    """A paused type's events wait as queued: past the backlog age they raise alert.backlog_stale too."""
    a = alerts(redis, sink, backlog_age=5)
    await queue(redis, "transcription.completed", "evt_parked")
    await redis.zrem(keys.ARQ_QUEUE, "evt_parked@0")
    await as_async_db(redis).hset(keys.event("evt_parked"), "received_ms", str(now_ms() - 7_000))
    await redis.zadd(keys.PARKED, {"evt_parked": now_ms()})
    await a.tick()
    [alert] = sink.accepted()
    assert alert["type"] == BACKLOG_STALE
    assert 6.5 < alert["data"]["oldest_queued_age_seconds"] < 9
    await a.aclose()


async def test_without_alert_url_nothing_is_written(redis: Redis) -> None:
    """Alerts off: no outbox, no gates."""
    a = Alerts(redis, Coalescer(redis), url=None, secret=None, cooldown=1, backlog_age=1, retry_cap=1)
    assert not await a.emit(CIRCUIT_OPENED, "/embeddings", {"route": "/embeddings"})
    assert await a.tick() == {}
    assert await redis.keys("rwh:alert*") == []
