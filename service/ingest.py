"""Make one verified delivery durable in ONE Redis round trip (contract §5), shared by concurrent deliveries.

The Lua script beside this module writes the dedup mark, the event record, the arq job (JSON, in arq's
own format, so a stock arq worker runs it) and the audit entry atomically. ``enqueue_job`` is not used: it
costs its own WATCH/MULTI round trips and cannot share a transaction with the dedup mark.

Coalescing: deliveries that arrive while a round trip is in flight wait, and then go together as one
pipelined write of their EVALSHAs on one connection (one write, one read of N replies). Each delivery is
still its own atomic script run with its own reply; only the network round trip and the client's
per-call work are shared. Under load this is what keeps the receiver near the speed of the web stack:
redis-py's per-call path (pool, lock, packing, one write and one read per call) costs far more CPU than the
script itself. A delivery is answered only after its own reply arrived, exactly as before.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

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


def _bulk(p: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(p), p)


class _Call:
    """One packed EVALSHA waiting for its reply."""

    __slots__ = ("future", "packed")

    def __init__(self, packed: bytes, future: asyncio.Future[Any]) -> None:
        self.packed = packed
        self.future = future


class Ingestor:
    """Runs the ingest script per delivery, coalescing concurrent deliveries; use from one event loop."""

    def __init__(
        self, redis: Redis, *, dedup_ttl: int, event_retention: int, dead_letter_retention: int,
        job_expiry_s: int,
    ) -> None:
        self._redis = redis
        script = redis.register_script(_SCRIPT)
        sha: bytes = script.sha.encode() if isinstance(script.sha, str) else bytes(script.sha)
        self._head = b"*28\r\n" + _bulk(b"EVALSHA") + _bulk(sha) + _bulk(b"8")
        self._const_keys = b"".join(_bulk(k.encode()) for k in (
            keys.ARQ_QUEUE, keys.INFLIGHT, keys.DEAD_LETTERS, keys.AUDIT_STREAM, keys.AUDIT_HEAD))
        self._dedup_ttl = _bulk(b"%d" % dedup_ttl)
        self._expiry_and_retention = b"".join(
            _bulk(b"%d" % v) for v in (job_expiry_s * 1000, event_retention, dead_letter_retention))
        self._pending: list[_Call] = []
        self._flusher: asyncio.Task[None] | None = None

    def _command(self, d: Delivery) -> bytes:
        """The EVALSHA as RESP bytes (an array of 28 bulk strings), constant parts packed once."""
        job_id = keys.job_id(d.event_id, 0)
        digest = entry_digest(
            event_id=d.event_id, received_ms=d.received_ms, request_id=d.request_id,
            secret_index=d.secret_index, header=d.header, body=d.body,
        )
        now = b"%d" % d.received_ms
        return b"".join((
            self._head,
            # KEYS 1-3, then 4-8 (constant)
            _bulk(keys.dedup(d.event_id).encode()), _bulk(keys.event(d.event_id).encode()),
            _bulk((keys.ARQ_JOB + job_id).encode()), self._const_keys,
            # ARGV 1-17 (see ingest.lua)
            _bulk(d.wanted.value.encode()), _bulk(d.event_id.encode()), self._dedup_ttl, _bulk(now),
            _bulk(job_id.encode()), _bulk(arq_job_payload(d.event_id, 0, d.received_ms).encode()),
            self._expiry_and_retention, _bulk(d.type.encode()), _bulk(b"%d" % d.created),
            _bulk(d.request_id.encode()), _bulk(b"%d" % d.secret_index), _bulk(d.header), _bulk(d.body),
            _bulk(digest.encode()), _bulk(d.reason.encode()),
        ))

    async def ingest(self, d: Delivery) -> IngestOutcome:
        """Run the ingest script for ``d``; raises what redis-py raises when Redis fails (STORAGE_ERRORS)."""
        loop = asyncio.get_running_loop()
        call = _Call(self._command(d), loop.create_future())
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
                    replies = await self._round_trip([c.packed for c in batch])
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

    async def _round_trip(self, packed: list[bytes], *, reload: bool = True) -> list[Any]:
        """Write the commands in one go and read one reply each; error replies come back as values."""
        pool = self._redis.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(packed)
            replies = await _read_replies(conn, len(packed))
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing and reload:
            # Redis restarted or was flushed: load the script once and resend only those (they did not run).
            await self._redis.script_load(_SCRIPT)
            again = await self._round_trip([packed[i] for i in missing], reload=False)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies


async def _read_replies(conn: Any, n: int) -> list[Any]:
    """n replies under ONE socket timeout, straight from the connection's parser.

    ``Connection.read_response`` does the same per reply, with a timeout context and an error string built
    each time; here that is paid once per batch. The parser (hiredis with redis-py 5.x) returns error
    replies as ResponseError values, so one bad reply does not hide the others.
    """
    parser = conn._parser
    try:
        async with asyncio.timeout(conn.socket_timeout):
            return [await parser.read_response() for _ in range(n)]
    except TimeoutError:
        raise RedisTimeoutError("Timeout reading from Redis") from None
    except OSError as exc:
        raise RedisConnectionError(f"Error while reading from Redis: {exc.args}") from None
