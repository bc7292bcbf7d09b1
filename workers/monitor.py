"""The worker's monitor loop: alerts (dead letters, ended storm windows, a stale backlog, delivery) and the
shared-state gauges of the metrics, once per ``INTERVAL_S``. Every worker runs it; the scripts behind it make
each alert happen once however many run."""

from __future__ import annotations

import asyncio
import time

import structlog
from redis.asyncio import Redis

from runinfra_webhooks.service.gateway.flow import breaker_states
from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.connection import STORAGE_ERRORS
from runinfra_webhooks.workers.alerts import Alerts, oldest_queued_age
from runinfra_webhooks.workers.metrics import WorkerMetrics

__all__ = ["INTERVAL_S", "monitor_loop", "monitor_once"]

INTERVAL_S = 1.0
log = structlog.get_logger("workers.monitor")


async def monitor_once(redis: Redis, alerts: Alerts, metrics: WorkerMetrics | None) -> None:
    if alerts.enabled:
        counts = await alerts.tick()
        if any(counts.values()):
            log.info("alerts.tick", **counts)
    if metrics is None:
        return
    now_ms = time.time_ns() // 1_000_000
    pipe = redis.pipeline(transaction=False)
    pipe.zcard(keys.ARQ_QUEUE)
    pipe.zcard(keys.DEAD_LETTERS)
    pipe.zcard(keys.PARKED)
    depth, dead, parked = await pipe.execute()
    metrics.queue_depth.set(depth)
    metrics.dead_letters.set(dead)
    metrics.paused_events.set(parked)
    age = await oldest_queued_age(redis, now_ms=now_ms)
    metrics.oldest_queued_age.set(age or 0.0)
    for state in await breaker_states(redis):
        metrics.set_breaker(state)


async def monitor_loop(redis: Redis, alerts: Alerts, metrics: WorkerMetrics | None) -> None:
    while True:
        try:
            await monitor_once(redis, alerts, metrics)
        except STORAGE_ERRORS as exc:  # Redis away: try again next round
            log.warning("monitor.failed", error=type(exc).__name__)
        except Exception as exc:  # anything else must not end the loop: alerts and gauges would stop silently
            log.error("monitor.failed", error=type(exc).__name__, detail=str(exc)[:200])
        await asyncio.sleep(INTERVAL_S)
