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
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis

from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.audit_store import trim_audit
from runinfra_webhooks.service.storage.event_index import trim_expired
from runinfra_webhooks.workers.deps import WorkerDeps

__all__ = ["SweepCursor", "sweep_once"]

log = structlog.get_logger("workers.sweep")


SWEEP_PAGE = 1000  # in-flight events read per round trip
SWEEP_PAGES = 10  # pages per run: a run costs at most SWEEP_PAGE * SWEEP_PAGES events' reads


@dataclass
class SweepCursor:
    """Where the next run goes on in the in-flight index (a score, exclusive), kept by the sweep loop.

    A backlog larger than one run's budget is examined in turns: run after run from the oldest on, and back
    to the oldest once the end is reached, so every stale event is looked at within a bounded number of runs
    instead of the same oldest ones each time.
    """

    after: str = "-inf"


async def sweep_once(deps: WorkerDeps, cursor: SweepCursor | None = None) -> dict[str, int]:
    s, redis = deps.settings, deps.redis
    cursor = cursor if cursor is not None else SweepCursor()
    now_ms = time.time_ns() // 1_000_000
    requeued = lost = examined = 0
    stale_before = now_ms - s.stuck_after * 1000
    for _ in range(SWEEP_PAGES):
        ids, last, more = await _stale_page(redis, cursor.after, stale_before)
        cursor.after = f"({last!r}" if more else "-inf"
        examined += len(ids)
        r, lo = await _examine(deps, ids, now_ms)
        requeued += r
        lost += lo
        if not more:
            break
    pruned = await redis.zremrangebyscore(keys.DEAD_LETTERS, "-inf", now_ms - s.dead_letter_retention * 1000)
    expired = await trim_expired(redis, now_ms)
    trimmed = await trim_audit(redis, older_than_ms=now_ms - s.audit_retention * 1000,
                               archive_dir=s.artifacts_dir / "audit-archive")
    result = {"examined": examined, "requeued": requeued, "lost": lost, "dead_letters_pruned": int(pruned),
              "audit_trimmed": trimmed, "index_expired": expired}
    if requeued or lost or pruned or trimmed or expired:
        log.info("sweep.done", **result)
    return result


async def _stale_page(redis: Redis, after: str, stale_before: int) -> tuple[list[str], float, bool]:
    """Up to a page of in-flight ids past ``after`` and not newer than ``stale_before``, the last score, and
    whether more may follow. A page never splits one score's events (the cursor is exclusive): the last
    score's tail waits for the next page, unless the whole page is that one score, which is then read whole."""
    rows = await redis.zrangebyscore(keys.INFLIGHT, after, stale_before, start=0, num=SWEEP_PAGE, withscores=True)
    more = len(rows) == SWEEP_PAGE
    if more:
        last = rows[-1][1]
        if rows[0][1] == last:
            rows = await redis.zrangebyscore(keys.INFLIGHT, last, last, withscores=True)
        else:
            rows = [r for r in rows if r[1] != last]
    if not rows:
        return [], 0.0, False
    return [m.decode() for m, _ in rows], float(rows[-1][1]), more


async def _examine(deps: WorkerDeps, ids: list[str], now_ms: int) -> tuple[int, int]:
    """One page: one read-only script reads what the verdicts need; only an event whose job is missing costs
    more (its record read again, then one guarded script)."""
    s, records, redis = deps.settings, deps.records, deps.redis
    present, gone = [], []
    for event_id, (generation, job_or_running, queued) in zip(ids, await records.inflight_checks(ids), strict=True):
        if generation is None:
            gone.append(event_id)  # the record expired
        else:
            present.append((event_id, keys.job_id(event_id, generation), job_or_running, queued))
    if gone:
        await redis.zrem(keys.INFLIGHT, *gone)
    requeued = lost = 0
    for event_id, job_id, job_or_running, queued in present:
        if job_or_running:
            if not queued and await redis.exists(keys.ARQ_JOB + job_id):
                await redis.zadd(keys.ARQ_QUEUE, {job_id: now_ms})  # job kept, queue entry lost
                requeued += 1
            continue
        record = await records.get(event_id)  # the job is missing: look again, as it is now
        if record is None:
            await redis.zrem(keys.INFLIGHT, event_id)
            continue
        if keys.job_id(event_id, record.generation) != job_id:
            continue  # replayed meanwhile: the next run sees its new generation
        if now_ms - record.received_ms > s.lost_deadline * 1000:
            if await records.lost(event_id, record.generation, now_ms, "job vanished past the deadline"):
                lost += 1
        elif await records.requeue_if_lost(event_id, record.generation, now_ms):
            requeued += 1
    return requeued, lost
