"""Enqueue the helper jobs of one build (``arq_job.PART_FUNCTION``), each at most once at a time."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from runinfra_webhooks.service.storage import arq_job

__all__ = ["enqueue_parts"]

# KEYS: the job, the queue. ARGV: job text, expiry ms, score (ms), job id. arq's own enqueue, as one script:
# a job that still waits or runs (its job key exists) is left alone.
_ENQUEUE = """
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
  return 1
end
return 0
"""


async def enqueue_parts(redis: Redis, *, event_id: str, generation: int, collection: str, revision: str, parts: int,
                        expiry_s: int) -> int:
    """Queue helpers 1..``parts`` of the build; returns how many were new."""
    script = redis.register_script(_ENQUEUE)
    now_ms = time.time_ns() // 1_000_000
    added = 0
    for part in range(1, parts + 1):
        job_id = arq_job.part_job_id(event_id, generation, collection, revision, part)
        text = arq_job.part_payload(event_id, generation, collection, revision, now_ms)
        added += int(await script(keys=[arq_job.JOB + job_id, arq_job.QUEUE],
                                  args=[text, expiry_s * 1000, now_ms, job_id]))
    return added
