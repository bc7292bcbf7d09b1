"""Make one verified delivery durable in ONE Redis round trip (contract §5), shared by concurrent deliveries.

The Lua script beside this module writes the dedup mark, the event record, the arq job (JSON, in arq's
own format, so a stock arq worker runs it) and the audit entry atomically. ``enqueue_job`` is not used: it
costs its own WATCH/MULTI round trips and cannot share a transaction with the dedup mark.

Coalescing: deliveries that arrive while a round trip is in flight wait, and then go together as one
redis-py pipeline (``transaction=False``, so no MULTI) of their EVALSHAs on one connection: one write, one
reply each, error replies returned per delivery (``raise_on_error=False``). Each delivery is still its own
atomic script run with its own reply; only the network round trip and the client's per-call work are
shared. Under load this is what keeps the receiver near the speed of the web stack: redis-py's per-call
path (pool checkout, one write and one read per call) costs far more CPU than the script itself. A delivery
is answered only after its own reply arrived. The pipeline is redis-py's public API; a hand-packed RESP
write read straight from the connection's parser measured ~5 % faster (docs/BENCHMARKS.md), not enough to
keep a private-API copy of what the library does.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

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


class _Call:
    """One delivery's EVALSHA arguments (keys, then ARGV) waiting for its reply."""

    __slots__ = ("args", "future")

    def __init__(self, args: tuple[Any, ...], future: asyncio.Future[Any]) -> None:
        self.args = args
        self.future = future


class Ingestor:
    """Runs the ingest script per delivery, coalescing concurrent deliveries; use from one event loop."""

    def __init__(
        self, redis: Redis, *, dedup_ttl: int, event_retention: int, dead_letter_retention: int,
        job_expiry_s: int,
    ) -> None:
        self._redis = redis
        self._sha = redis.register_script(_SCRIPT).sha
        self._const_keys = (keys.ARQ_QUEUE, keys.INFLIGHT, keys.DEAD_LETTERS, keys.AUDIT_STREAM, keys.AUDIT_HEAD)
        self._dedup_ttl = dedup_ttl
        self._expiry_and_retention = (job_expiry_s * 1000, event_retention, dead_letter_retention)
        self._pending: list[_Call] = []
        self._flusher: asyncio.Task[None] | None = None

    def _args(self, d: Delivery) -> tuple[Any, ...]:
        """KEYS 1-8 then ARGV 1-17 of the script (see ingest.lua)."""
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
        loop = asyncio.get_running_loop()
        call = _Call(self._args(d), loop.create_future())
        self._pending.append(call)
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        reply = await call.future
        return _OUTCOMES[reply] if isinstance(reply, bytes) else IngestOutcome(reply)

    async def _flush(self) -> None:
        """Send what is pending as one pipelined round trip, again until nothing is pending."""
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    replies = await self._round_trip([c.args for c in batch])
                except Exception as exc:
                    for c in batch:
                        if not c.future.done():
                            c.future.set_exception(exc)
                    continue
                except BaseException:  # cancelled (loop shutting down): nobody will answer these
                    for c in (*batch, *self._pending):
                        c.future.cancel()
                    self._pending = []
                    raise
                for c, reply in zip(batch, replies, strict=True):
                    if c.future.done():
                        continue
                    if isinstance(reply, Exception):
                        c.future.set_exception(reply)
                    else:
                        c.future.set_result(reply)
        finally:
            self._flusher = None

    async def _round_trip(self, calls: list[tuple[Any, ...]], *, reload: bool = True) -> list[Any]:
        """One redis-py pipeline (no MULTI) of one EVALSHA per call; error replies come back as values."""
        pipe = self._redis.pipeline(transaction=False)
        for args in calls:
            pipe.evalsha(self._sha, 8, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing and reload:
            # Redis restarted or was flushed: load the script once and resend only those (they did not run).
            await self._redis.script_load(_SCRIPT)
            again = await self._round_trip([calls[i] for i in missing], reload=False)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies
