"""The sweep's "lost" verdict must not overwrite an event that finished while the sweep was looking.

The sweep reads an in-flight event, sees no arq job, and (past RUNINFRA_LOST_DEADLINE) dead-letters it as
``lost``. If a worker finishes the event between that read and that write, the event must stay succeeded:
a succeeded event parked as ``lost`` would be re-run by the next ``replay --all-dead-lettered`` under a new
key generation, i.e. charged a second time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from runinfra_webhooks.handlers.registry import Registry
from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.ingest import Delivery, Ingestor, IngestOutcome
from runinfra_webhooks.service.storage.records import EventRecord, Records
from runinfra_webhooks.workers.deps import WorkerDeps
from runinfra_webhooks.workers.sweep import sweep_once
from tests.conftest import make_settings

pytestmark = pytest.mark.fault

DAY_MS = 86_400_000


class WorkerFinishesMeanwhile(Records):
    """The sweep's read of the record, with a worker finishing the event right after it."""

    async def get(self, event_id: str) -> EventRecord | None:
        seen = await super().get(event_id)
        if seen is not None and seen.state == "queued":
            await self.succeeded(event_id, seen.generation, time.time_ns() // 1_000_000)
        return seen


async def test_sweep_does_not_mark_a_just_finished_event_lost(redis_url: str, tmp_path: Path) -> None:
    """An event that finishes while the sweep looks at it stays succeeded, not dead-lettered as lost."""
    settings = make_settings(redis_url, tmp_path)
    redis = Redis.from_url(redis_url)
    try:
        received = time.time_ns() // 1_000_000 - 2 * DAY_MS  # older than the lost deadline (1 day)
        body = json.dumps({"id": "evt_race", "type": "deployment.created", "created": 1, "data": {}}).encode()
        ingestor = Ingestor(redis, dedup_ttl=60, event_retention=60, dead_letter_retention=60, job_expiry_s=60)
        delivery = Delivery(wanted=IngestOutcome.QUEUED, event_id="evt_race", type="deployment.created",
                            created=1, header=b"", body=body, request_id="req", secret_index=0,
                            received_ms=received)
        assert await ingestor.ingest(delivery) is IngestOutcome.QUEUED
        await redis.delete(keys.ARQ_JOB + keys.job_id("evt_race", 0))  # its job vanished
        records = WorkerFinishesMeanwhile(redis, event_retention=60, dead_letter_retention=60, job_expiry_s=60)
        deps = WorkerDeps(settings=settings, redis=redis, records=records, gateway=None, registry=Registry())

        result = await sweep_once(deps)

        record = await Records.get(records, "evt_race")
        assert record is not None
        assert (record.state, record.reason) == ("succeeded", ""), record  # before: dead_lettered / lost
        assert await redis.zscore(keys.DEAD_LETTERS, "evt_race") is None
        assert result["lost"] == 0
    finally:
        await redis.aclose()
