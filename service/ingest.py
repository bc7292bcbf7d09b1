"""Make one verified delivery durable in ONE Redis round trip (contract §5).

The Lua script beside this module writes the dedup mark, the event record, the arq job (JSON, in arq's
own format, so a stock arq worker runs it) and the audit entry atomically. ``enqueue_job`` is not used: it
costs its own WATCH/MULTI round trips and cannot share a transaction with the dedup mark.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources

from redis.asyncio import Redis

from service import keys
from service.audit import entry_digest

__all__ = ["Delivery", "IngestOutcome", "Ingestor", "arq_job_payload"]

_SCRIPT = resources.files("service").joinpath("ingest.lua").read_text()


class IngestOutcome(StrEnum):
    QUEUED = "queued"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    DEAD_LETTERED = "dead_lettered"
    INVALID_JSON = "invalid_json"
    INVALID_EVENT = "invalid_event"


@dataclass(frozen=True, slots=True)
class Delivery:
    """A delivery whose signature verified, with what the receiver decided it wants."""

    wanted: IngestOutcome  # queued | ignored | dead_lettered | invalid_json | invalid_event
    event_id: str  # "" when the body had no usable id
    type: str
    created: int
    header: bytes
    body: bytes
    request_id: str
    secret_index: int
    received_ms: int
    reason: str = ""


def arq_job_payload(event_id: str, generation: int, enqueue_ms: int, job_try: int = 1) -> str:
    """arq 0.28's job format (arq.jobs.serialize_job) with JSON instead of pickle."""
    return json.dumps(
        {"t": job_try, "f": keys.PROCESS_EVENT, "a": [event_id, generation], "k": {}, "et": enqueue_ms},
        separators=(",", ":"),
    )


class Ingestor:
    def __init__(
        self, redis: Redis, *, dedup_ttl: int, event_retention: int, dead_letter_retention: int,
        job_expiry_s: int,
    ) -> None:
        self._script = redis.register_script(_SCRIPT)
        self._dedup_ttl = dedup_ttl
        self._event_retention = event_retention
        self._dead_retention = dead_letter_retention
        self._job_expiry_ms = job_expiry_s * 1000

    async def ingest(self, d: Delivery) -> IngestOutcome:
        job_id = keys.job_id(d.event_id, 0)
        digest = entry_digest(
            event_id=d.event_id, received_ms=d.received_ms, request_id=d.request_id,
            secret_index=d.secret_index, header=d.header, body=d.body,
        )
        result = await self._script(
            keys=[
                keys.dedup(d.event_id), keys.event(d.event_id), keys.ARQ_JOB + job_id, keys.ARQ_QUEUE,
                keys.INFLIGHT, keys.DEAD_LETTERS, keys.AUDIT_STREAM, keys.AUDIT_HEAD,
            ],
            args=[
                d.wanted.value, d.event_id, self._dedup_ttl, d.received_ms, job_id,
                arq_job_payload(d.event_id, 0, d.received_ms), self._job_expiry_ms,
                self._event_retention, self._dead_retention, d.type, d.created, d.request_id,
                d.secret_index, d.header, d.body, digest, d.reason,
            ],
        )
        return IngestOutcome(result.decode() if isinstance(result, bytes) else result)
