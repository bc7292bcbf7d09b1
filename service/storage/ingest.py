"""Make one verified delivery durable in ONE Redis round trip, shared by concurrent deliveries.

The Lua script beside this module writes the dedup mark, the event record, the arq job (JSON, in arq's
own format, so a stock arq worker runs it) and the audit entry atomically. ``enqueue_job`` is not used: it
costs its own WATCH/MULTI round trips and cannot share a transaction with the dedup mark.

Deliveries that arrive while a round trip is in flight go together in the next one (``service.coalesce``):
each is still its own atomic script run with its own reply, answered only after that reply. Under load this
is what keeps the receiver near the speed of the web stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any

from redis.asyncio import Redis

from runinfra_webhooks.service.core.audit import EntryMac, body_sha256, entry_digest, entry_key
from runinfra_webhooks.service.core.ids import new_id
from runinfra_webhooks.service.storage import arq_job, keys
from runinfra_webhooks.service.storage.coalesce import Coalescer

__all__ = ["REFERENCE_BODIES_FROM", "Delivery", "IngestOutcome", "Ingestor"]

# A duplicate's body at least this long is kept once, by digest, instead of in every duplicate's entry.
REFERENCE_BODIES_FROM = 1024

_SCRIPT = resources.files("runinfra_webhooks.service.storage").joinpath("ingest.lua").read_text()


class IngestOutcome(StrEnum):
    QUEUED = "queued"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    DEAD_LETTERED = "dead_lettered"
    INVALID_JSON = "invalid_json"
    INVALID_EVENT = "invalid_event"


_OUTCOMES = {o.value.encode(): o for o in IngestOutcome}


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 3x, and one is built per delivery
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
    traceparent: str = ""  # the receiver's span, kept with the record so the worker continues its trace
    delivery_id: str = ""  # made by the ingestor when empty


class Ingestor:
    """Runs the ingest script per delivery, coalescing concurrent deliveries; use from one event loop."""

    def __init__(
        self, redis: Redis, *, dedup_ttl: int, event_retention: int, dead_letter_retention: int,
        job_expiry_s: int, secrets: tuple[bytes, ...] = (), audit_retention: int = 2_592_000,
        timeout: float | None = None,
    ) -> None:
        self._coalescer = Coalescer(redis, timeout=timeout)
        self._script = self._coalescer.script(_SCRIPT)
        self._const_keys = (keys.ARQ_QUEUE, keys.INFLIGHT, keys.DEAD_LETTERS, keys.AUDIT_STREAM, keys.AUDIT_HEAD)
        self._dedup_ttl = dedup_ttl
        self._expiry_and_retention = (job_expiry_s * 1000, event_retention, dead_letter_retention)
        # MAC keys of audit entries, one per webhook secret (the entry's secret_index picks it).
        self._entry_macs = tuple(EntryMac(entry_key(s)) for s in secrets) or (EntryMac(b""),)
        self._body_ttl_ms = 2 * audit_retention * 1000

    def _args(self, d: Delivery) -> tuple[Any, ...]:
        """KEYS 1-10 then ARGV 1-23 of the script (see ingest.lua)."""
        job_id = keys.job_id(d.event_id, 0)
        delivery_id = d.delivery_id or new_id()
        body_hash = body_sha256(d.body)
        body_hex = body_hash.hex()
        digest = entry_digest(
            event_id=d.event_id, received_ms=d.received_ms, request_id=d.request_id,
            secret_index=d.secret_index, header=d.header, body=d.body, delivery_id=delivery_id,
            body_hash=body_hash,
        )
        macs = self._entry_macs
        mac = macs[d.secret_index] if d.secret_index < len(macs) else macs[0]
        body_ttl = self._body_ttl_ms if len(d.body) >= REFERENCE_BODIES_FROM else 0
        return (
            keys.dedup(d.event_id), keys.event(d.event_id), keys.ARQ_JOB + job_id, *self._const_keys,
            keys.audit_body(body_hex), keys.CONSOLE_INDEX,
            d.wanted.value, d.event_id, self._dedup_ttl, d.received_ms, job_id,
            arq_job.payload(d.event_id, 0, d.received_ms), *self._expiry_and_retention, d.type, d.created,
            d.request_id, d.secret_index, d.header, d.body, digest, d.reason,
            delivery_id, mac(d.wanted.value, digest), mac("duplicate", digest), body_hex,
            body_ttl, d.traceparent,
        )

    async def ingest(self, d: Delivery) -> IngestOutcome:
        """Run the ingest script for ``d``; raises what redis-py raises when Redis fails (STORAGE_ERRORS)."""
        reply = await self._coalescer.run(self._script, 10, self._args(d))
        return _OUTCOMES[reply] if isinstance(reply, bytes) else IngestOutcome(reply)
