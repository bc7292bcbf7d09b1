"""Many dead letters, fast: each through the real ingest script and the real transitions a worker runs."""

from __future__ import annotations

import asyncio
import json
import time

from redis.asyncio import Redis

from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.ingest import Delivery, Ingestor, IngestOutcome
from runinfra_webhooks.service.storage.records import Records

RETENTION_S = 3600


def dead_id(i: int) -> str:
    return f"evt_dead_{i:07d}"


async def fill_dead_letters(redis_url: str, n: int, *, per_ms: int = 3, start_ms: int | None = None) -> int:
    """Dead-letter ``n`` events, ``per_ms`` of them in each millisecond (their dead-letter score) from
    ``start_ms`` (default: just long enough ago); then drop arq's queue, as if the workers had finished those
    jobs, so what a replay queues is all it holds. Returns the first score."""
    first = start_ms if start_ms is not None else time.time_ns() // 1_000_000 - n // per_ms - 10_000
    redis = Redis.from_url(redis_url)
    ingestor = Ingestor(redis, dedup_ttl=RETENTION_S, event_retention=RETENTION_S,
                        dead_letter_retention=RETENTION_S, job_expiry_s=RETENTION_S)
    records = Records(redis, event_retention=RETENTION_S, dead_letter_retention=RETENTION_S,
                      job_expiry_s=RETENTION_S)

    async def one(i: int) -> None:
        event_id, at = dead_id(i), first + i // per_ms
        body = json.dumps({"id": event_id, "type": "deployment.failed", "created": 1, "data": {}}).encode()
        outcome = await ingestor.ingest(Delivery(wanted=IngestOutcome.QUEUED, event_id=event_id,
                                                 type="deployment.failed", created=1, header=b"", body=body,
                                                 request_id=f"req-{i}", secret_index=0, received_ms=at))
        assert outcome is IngestOutcome.QUEUED, outcome
        assert not isinstance(await records.start(event_id, 0, at), int)
        assert await records.dead_lettered(event_id, 0, at, "gateway_bad_request", "400 from the gateway")

    try:
        for start in range(0, n, 500):
            await asyncio.gather(*(one(i) for i in range(start, min(n, start + 500))))
        await redis.delete(keys.ARQ_QUEUE)
    finally:
        await redis.aclose()
    return first
