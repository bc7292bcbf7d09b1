"""Put one event on the queue the way the receiver does (one ingest script), for tests below the HTTP layer."""

from __future__ import annotations

import json
import time

from redis.asyncio import Redis

from runinfra_webhooks.service.storage.ingest import Delivery, Ingestor, IngestOutcome
from tests.builders import example_event


async def queue(redis: Redis, type_: str, event_id: str) -> None:
    """An example event of ``type_`` with id ``event_id``, received now: record, arq job, audit entry."""
    ingestor = Ingestor(redis, dedup_ttl=600, event_retention=600, dead_letter_retention=600, job_expiry_s=600)
    event = example_event(type_, id=event_id)
    delivery = Delivery(wanted=IngestOutcome.QUEUED, event_id=event_id, type=type_, created=event["created"],
                        header=b"", body=json.dumps(event).encode(), request_id="req", secret_index=0,
                        received_ms=time.time_ns() // 1_000_000)
    assert await ingestor.ingest(delivery) is IngestOutcome.QUEUED
