"""The sweep: nothing queued is silently lost.

Runs in every worker every RUNINFRA_SWEEP_INTERVAL seconds (all of it is idempotent and script-guarded, so
several workers sweeping at once is harmless):

* an in-flight event whose arq job vanished (expired, evicted, lost) is re-queued under the same
  generation, or dead-lettered as ``lost`` once it is older than RUNINFRA_LOST_DEADLINE;
* dead-letter index entries whose record has expired are pruned, and so are the console's index entries
  of expired records;
* audit entries older than RUNINFRA_AUDIT_RETENTION are trimmed, the chain's base moving with them.
"""

from __future__ import annotations

import time

import structlog

from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.audit_store import trim_audit
from runinfra_webhooks.service.storage.event_index import trim_expired
from runinfra_webhooks.workers.deps import WorkerDeps

__all__ = ["sweep_once"]

log = structlog.get_logger("workers.sweep")


async def sweep_once(deps: WorkerDeps) -> dict[str, int]:
    s, records, redis = deps.settings, deps.records, deps.redis
    now_ms = time.time_ns() // 1_000_000
    requeued = lost = 0
    for event_id in await records.stale_inflight(now_ms - s.stuck_after * 1000):
        record = await records.get(event_id)
        if record is None:
            await redis.zrem(keys.INFLIGHT, event_id)
            continue
        job_id = keys.job_id(event_id, record.generation)
        if await redis.exists(keys.ARQ_JOB + job_id, keys.ARQ_IN_PROGRESS + job_id):
            if await redis.zscore(keys.ARQ_QUEUE, job_id) is None and await redis.exists(keys.ARQ_JOB + job_id):
                await redis.zadd(keys.ARQ_QUEUE, {job_id: now_ms})  # job kept, queue entry lost
                requeued += 1
            continue
        if now_ms - record.received_ms > s.lost_deadline * 1000:
            if await records.lost(event_id, record.generation, now_ms, "job vanished past the deadline"):
                lost += 1
        elif await records.requeue_if_lost(event_id, record.generation, now_ms):
            requeued += 1
    pruned = await redis.zremrangebyscore(keys.DEAD_LETTERS, "-inf", now_ms - s.dead_letter_retention * 1000)
    expired = await trim_expired(redis, now_ms)
    trimmed = await trim_audit(redis, older_than_ms=now_ms - s.audit_retention * 1000,
                               archive_dir=s.artifacts_dir / "audit-archive")
    result = {"requeued": requeued, "lost": lost, "dead_letters_pruned": int(pruned), "audit_trimmed": trimmed,
              "index_expired": expired}
    if requeued or lost or pruned or trimmed or expired:
        log.info("sweep.done", **result)
    return result
