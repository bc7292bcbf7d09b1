"""Taking a queued arq job for one worker: arq's own check-and-mark, as one script.

arq 0.28 claims a job with four round trips in a row (WATCH the in-progress key, EXISTS it, ZSCORE the job,
MULTI/SET/EXEC). The same decision in one script is atomic by itself, and the claims of the jobs a worker
starts together share round trips (a ``Coalescer``), so a freed slot is refilled after one round trip
instead of four.
"""

from __future__ import annotations

from runinfra_webhooks.service.storage.arq_job import IN_PROGRESS, QUEUE
from runinfra_webhooks.service.storage.coalesce import Coalescer

__all__ = ["JobClaims"]

# KEYS: the job's in-progress key, the queue. ARGV: job id, now (ms), how long the mark lasts (ms).
# Returns the job's score (its enqueue-for time, ms) when it is this worker's now; nil when another worker runs
# it, it is no longer queued (finished, or taken and removed), or it is deferred to later.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[3])
return score
"""


class JobClaims:
    def __init__(self, scripts: Coalescer, *, queue: str = QUEUE) -> None:
        self._claim = scripts.script(_CLAIM)
        self._queue = queue

    async def claim(self, job_id: str, now_ms: int, hold_ms: int) -> int | None:
        """Mark ``job_id`` in progress for ``hold_ms`` and return its score, or None if it is not ours to run."""
        score = await self._claim(keys=[IN_PROGRESS + job_id, self._queue], args=[job_id, now_ms, hold_ms])
        return None if score is None else int(float(score))
