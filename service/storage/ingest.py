"""Make one verified delivery durable in ONE Redis round trip (contract §5), shared by concurrent deliveries.

The Lua script beside this module writes the dedup mark, the event record, the arq job (JSON, in arq's
own format, so a stock arq worker runs it) and the audit entry atomically. ``enqueue_job`` is not used: it
costs its own WATCH/MULTI round trips and cannot share a transaction with the dedup mark.

Deliveries that arrive while a round trip is in flight go together in the next one (``service.coalesce``):
each is still its own atomic script run with its own reply, answered only after that reply. Under load this
is what keeps the receiver near the speed of the web stack.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from runinfra_webhooks.service.core.audit import entry_digest
from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.coalesce import Coalescer

__all__ = ["Delivery", "IngestOutcome", "Ingestor", "arq_job_payload"]

_SCRIPT = resources.files("runinfra_webhooks.service.storage").joinpath("ingest.lua").read_text()


class IngestOutcome(StrEnum):
    QUEUED = "queued"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    DEAD_LETTERED = "dead_lettered"
    INVALID_JSON = "invalid_json"
    INVALID_EVENT = "invalid_event"


_OUTCOMES = {o.value.encode(): o for o in IngestOutcome}


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
    """arq 0.28's job format (arq.jobs.serialize_job) with JSON instead of pickle.

    Byte for byte ``json.dumps({"t", "f", "a", "k", "et"}, separators=(",", ":"))``, built as text because it
    runs once per delivery (a json.dumps with non-default arguments builds a new encoder every call).
    """
    return (f'{{"t":{int(job_try)},"f":"{keys.PROCESS_EVENT}","a":[{json.dumps(event_id)},{int(generation)}],'
            f'"k":{{}},"et":{int(enqueue_ms)}}}')


class Ingestor:
    """Runs the ingest script per delivery, coalescing concurrent deliveries; use from one event loop."""

    def __init__(
        self, redis: Redis, *, dedup_ttl: int, event_retention: int, dead_letter_retention: int,
        job_expiry_s: int,
    ) -> None:
        self._coalescer = Coalescer(redis)
        self._script = self._coalescer.script(_SCRIPT)
        self._const_keys = (keys.ARQ_QUEUE, keys.INFLIGHT, keys.DEAD_LETTERS, keys.AUDIT_STREAM, keys.AUDIT_HEAD,
                            keys.CONSOLE_INDEX)
        self._dedup_ttl = dedup_ttl
        self._expiry_and_retention = (job_expiry_s * 1000, event_retention, dead_letter_retention)

    def _args(self, d: Delivery) -> tuple[Any, ...]:
        """KEYS 1-9 then ARGV 1-17 of the script (see ingest.lua)."""
        job_id = keys.job_id(d.event_id, 0)
        digest = entry_digest(
            event_id=d.event_id, received_ms=d.received_ms, request_id=d.request_id,
            secret_index=d.secret_index, header=d.header, body=d.body,
        )
        return (
            keys.dedup(d.event_id), keys.event(d.event_id), keys.ARQ_JOB + job_id, *self._const_keys,
            d.wanted.value, d.event_id, self._dedup_ttl, d.received_ms, job_id,
            arq_job_payload(d.event_id, 0, d.received_ms), *self._expiry_and_retention, d.type, d.created,
            d.request_id, d.secret_index, d.header, d.body, digest, d.reason,
        )

    async def ingest(self, d: Delivery) -> IngestOutcome:
        """Run the ingest script for ``d``; raises what redis-py raises when Redis fails (STORAGE_ERRORS)."""
        reply = await self._coalescer.run(self._script, 9, self._args(d))
        return _OUTCOMES[reply] if isinstance(reply, bytes) else IngestOutcome(reply)
