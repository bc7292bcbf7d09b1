"""The sweep with a backlog in flight: bounded work per run, and every stale event looked at in turn."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from runinfra_webhooks.handlers.registry import Registry
from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.ingest import Delivery, Ingestor, IngestOutcome
from runinfra_webhooks.service.storage.records import Records
from runinfra_webhooks.workers import sweep
from runinfra_webhooks.workers.deps import WorkerDeps
from runinfra_webhooks.workers.sweep import SweepCursor, sweep_once
from tests.conftest import make_settings

BACKLOG = 2_500


async def _backlog(redis: Redis, n: int, received_ms: int) -> None:
    """``n`` queued events (their arq jobs waiting), all received long enough ago to be stale."""
    ingestor = Ingestor(redis, dedup_ttl=3600, event_retention=3600, dead_letter_retention=3600, job_expiry_s=3600)

    async def one(i: int) -> None:
        event_id = f"evt_backlog_{i:06d}"
        body = json.dumps({"id": event_id, "type": "deployment.created", "created": 1, "data": {}}).encode()
        assert await ingestor.ingest(Delivery(wanted=IngestOutcome.QUEUED, event_id=event_id,
                                              type="deployment.created", created=1, header=b"", body=body,
                                              request_id="req", secret_index=0,
                                              received_ms=received_ms + i)) is IngestOutcome.QUEUED

    for start in range(0, n, 500):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + 500))))


async def test_a_vanished_job_behind_a_large_backlog_is_recreated_within_a_few_runs(
    redis: Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2,500 stale queued events with their jobs, the newest one's job gone; each run reads one page (1,000):
    the run after the backlog's first 2,000 reaches it (before: every run re-read the oldest 1,000)."""
    monkeypatch.setattr(sweep, "SWEEP_PAGES", 1)
    await _backlog(redis, BACKLOG, time.time_ns() // 1_000_000 - 3_600_000)
    last = f"evt_backlog_{BACKLOG - 1:06d}"
    await redis.delete(keys.ARQ_JOB + keys.job_id(last, 0))
    await redis.zrem(keys.ARQ_QUEUE, keys.job_id(last, 0))
    records = Records(redis, event_retention=3600, dead_letter_retention=3600, job_expiry_s=3600)
    deps = WorkerDeps(settings=make_settings(redis_url, tmp_path), redis=redis, records=records, gateway=None,
                      registry=Registry())
    cursor = SweepCursor()

    results = [await sweep_once(deps, cursor) for _ in range(3)]

    assert [r["examined"] for r in results] == [999, 999, 502]  # a page leaves its last millisecond to the next
    assert [r["requeued"] for r in results] == [0, 0, 1]
    assert await redis.exists(keys.ARQ_JOB + keys.job_id(last, 0))
    assert (await sweep_once(deps, cursor))["examined"] == 999  # back to the oldest


async def test_one_run_reads_a_page_per_round_trip_and_no_bodies(redis: Redis, redis_url: str,
                                                                  tmp_path: Path) -> None:
    """A run over 2,500 healthy stale events: a handful of round trips, no whole-record reads."""
    await _backlog(redis, BACKLOG, time.time_ns() // 1_000_000 - 3_600_000)
    records = Records(redis, event_retention=3600, dead_letter_retention=3600, job_expiry_s=3600)
    deps = WorkerDeps(settings=make_settings(redis_url, tmp_path), redis=redis, records=records, gateway=None,
                      registry=Registry())
    await redis.config_resetstat()
    result = await sweep_once(deps)
    assert result["examined"] == BACKLOG
    stats = await redis.info("commandstats")
    assert "cmdstat_hgetall" not in stats
    assert stats["cmdstat_hmget"]["calls"] == BACKLOG
    assert stats["cmdstat_zrangebyscore"]["calls"] <= 4
