"""Stored events for console tests, written through the real ingest script and state transitions."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from runinfra_webhooks.service.core.signature import sign
from runinfra_webhooks.service.storage.ingest import Delivery, Ingestor, IngestOutcome
from runinfra_webhooks.service.storage.records import Records
from tests.builders import OLD_SECRET, SECRET, example_event

TOKEN = "console-test-token-0123456789abcdefghij"


@dataclass(frozen=True)
class Seeded:
    event_id: str
    type: str
    state: str
    received_ms: int


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _seed(redis_url: str, plan: Sequence[tuple[str, str, Mapping[str, object] | None]], *, start_ms: int,
                step_ms: int, retention: int) -> list[Seeded]:
    """plan: (type, final state, extra data) per event; received start_ms, start_ms + step_ms, ..."""
    redis = Redis.from_url(redis_url)
    # Keyed like the console under test (make_settings' secrets), so its audit verification accepts the MACs.
    ingestor = Ingestor(redis, dedup_ttl=3600, event_retention=retention, dead_letter_retention=retention,
                        job_expiry_s=3600, secrets=(SECRET.encode(), OLD_SECRET.encode()))
    records = Records(redis, event_retention=retention, dead_letter_retention=retention, job_expiry_s=3600)
    out = []
    try:
        for i, (type_, state, data) in enumerate(plan):
            known = type_.startswith(("deployment.", "transcription."))
            event = example_event(type_) if known else {**example_event(), "type": type_}
            if data:
                event["data"] = {**event["data"], **data}
            body = json.dumps(event).encode()
            at = start_ms + i * step_ms
            wanted = IngestOutcome.IGNORED if state == "ignored" else IngestOutcome.QUEUED
            header = sign(body, SECRET, at // 1000).encode()
            await ingestor.ingest(Delivery(wanted, event["id"], type_, int(event["created"]), header, body,
                                           f"req-{i}", 0, at))
            if state in ("processing", "retrying", "succeeded", "dead_lettered"):
                await records.start(event["id"], 0, at + 1)
            if state == "retrying":
                await records.retrying(event["id"], 0, at + 2, "TransientError")
            elif state == "succeeded":
                await records.add_request_id(event["id"], f"gw-{i}", f"rwh_key_{i}")
                await records.succeeded(event["id"], 0, at + 2)
            elif state == "dead_lettered":
                await records.dead_lettered(event["id"], 0, at + 2, "gateway_bad_request", "400 from the gateway")
            out.append(Seeded(event["id"], type_, state, at))
    finally:
        await redis.aclose()
    return out


def seed(redis_url: str, plan: Sequence[tuple[str, str, Mapping[str, object] | None]], *, start_ms: int | None = None,
         step_ms: int = 1000, retention: int = 3600) -> list[Seeded]:
    start = start_ms if start_ms is not None else _now_ms() - len(plan) * step_ms
    return asyncio.run(_seed(redis_url, plan, start_ms=start, step_ms=step_ms, retention=retention))
