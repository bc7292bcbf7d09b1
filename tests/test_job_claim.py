"""A worker takes a queued arq job with one script: only a due, queued job nobody runs is taken, and only once."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from runinfra_webhooks.service.storage import arq_job
from runinfra_webhooks.service.storage.coalesce import Coalescer
from runinfra_webhooks.service.storage.job_claim import JobClaims

NOW_MS = 1_800_000_000_000


async def test_a_due_job_is_taken_once_and_marked_in_progress(redis: Redis) -> None:
    await redis.zadd(arq_job.QUEUE, {"evt_a@0": NOW_MS - 5})
    claims = JobClaims(Coalescer(redis))
    results = await asyncio.gather(*(claims.claim("evt_a@0", NOW_MS, 45_000) for _ in range(5)))
    assert sorted(results, key=str) == [NOW_MS - 5, None, None, None, None]
    assert await redis.get(arq_job.IN_PROGRESS + "evt_a@0") == b"1"
    assert 44_000 < await redis.pttl(arq_job.IN_PROGRESS + "evt_a@0") <= 45_000


async def test_a_job_running_elsewhere_is_left_alone(redis: Redis) -> None:
    await redis.zadd(arq_job.QUEUE, {"evt_b@0": NOW_MS})
    await redis.set(arq_job.IN_PROGRESS + "evt_b@0", b"1", px=60_000)
    assert await JobClaims(Coalescer(redis)).claim("evt_b@0", NOW_MS, 45_000) is None
    assert 45_000 < await redis.pttl(arq_job.IN_PROGRESS + "evt_b@0")  # the other worker's mark is untouched


async def test_a_finished_or_deferred_job_is_not_taken(redis: Redis) -> None:
    await redis.zadd(arq_job.QUEUE, {"evt_later@0": NOW_MS + 1_000})
    claims = JobClaims(Coalescer(redis))
    assert await claims.claim("evt_gone@0", NOW_MS, 45_000) is None  # no longer in the queue
    assert await claims.claim("evt_later@0", NOW_MS, 45_000) is None  # a retry deferred to later
    assert await redis.exists(arq_job.IN_PROGRESS + "evt_gone@0", arq_job.IN_PROGRESS + "evt_later@0") == 0
    assert await claims.claim("evt_later@0", NOW_MS + 1_000, 45_000) == NOW_MS + 1_000
