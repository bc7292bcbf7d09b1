"""How the worker fills its job slots: freed slots are refilled at once, its own running jobs are skipped."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from redis.asyncio import Redis

from runinfra_webhooks.service.storage.ingest import Delivery, Ingestor, IngestOutcome
from runinfra_webhooks.workers.settings import build_worker
from tests.builders import example_event
from tests.conftest import make_settings
from tests.down_pool import DownPool


async def queue_deployment_events(redis: Redis, n: int) -> None:
    ingestor = Ingestor(redis, dedup_ttl=600, event_retention=600, dead_letter_retention=600, job_expiry_s=600)
    now = time.time_ns() // 1_000_000
    for i in range(n):
        event = example_event("deployment.created", id=f"evt_slot_{i:03d}", created=1_000 + i)
        delivery = Delivery(wanted=IngestOutcome.QUEUED, event_id=event["id"], type=event["type"],
                            created=event["created"], header=b"", body=json.dumps(event).encode(),
                            request_id=f"req_{i}", secret_index=0, received_ms=now)
        assert await ingestor.ingest(delivery) is IngestOutcome.QUEUED


async def test_freed_slots_are_refilled_from_the_same_poll(redis: Redis, redis_url: str, tmp_path: Path) -> None:
    """30 jobs through 5 slots need one read of the queue, not one read per 5 jobs and a poll delay each."""
    await queue_deployment_events(redis, 30)
    settings = make_settings(redis_url, tmp_path, RUNINFRA_WORKER_CONCURRENCY=5, RUNINFRA_WORKER_POLL_DELAY=1)
    worker = build_worker(settings, burst=True)
    reads: list[int] = []  # the number of job ids each of arq's polls read from the queue and handed on
    start_jobs = worker.start_jobs

    async def counted(job_ids: list[bytes]) -> None:
        reads.append(len(job_ids))
        await start_jobs(job_ids)

    worker.start_jobs = counted  # type: ignore[method-assign]
    try:
        await worker.main()
    finally:
        await worker.on_shutdown(worker.ctx)  # type: ignore[misc]  # arq's close() calls a deprecated redis-py API
        await worker.pool.aclose()
    assert worker.jobs_complete == 30 and worker.jobs_failed == 0
    # The first poll started all 30 (waiting for slots); one more, a poll delay later, found the queue empty.
    assert reads[0] == 30 and len(reads) <= 2 and sum(reads[1:]) == 0, f"polls read {reads}"


async def test_a_job_running_here_is_not_checked_again_in_redis(redis_url: str, tmp_path: Path) -> None:
    """A job already running in this worker is skipped without asking Redis (down here) about it."""
    worker = build_worker(make_settings(redis_url, tmp_path), burst=True)
    worker._pool = DownPool()  # type: ignore[assignment]  # a stand-in that fails like an unreachable Redis
    running = asyncio.ensure_future(asyncio.sleep(10))
    worker.tasks["evt_x@0"] = running
    try:
        await worker.start_jobs([b"evt_x@0"])  # before: a WATCH/EXISTS/ZSCORE round trip to find it running
    finally:
        running.cancel()
    assert worker.job_counter == 0
