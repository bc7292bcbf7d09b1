"""Reading, exporting and trimming the audit stream in Redis (the pure rules live in service.audit)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

from redis.asyncio import Redis

from runinfra_webhooks.service.core.audit import GENESIS, entry_as_json
from runinfra_webhooks.service.core.audit_file import ExportTrailer
from runinfra_webhooks.service.storage import keys

__all__ = ["TRIM_SCRIPT", "CorruptPointer", "audit_base", "audit_head", "inline_bodies", "iter_audit",
           "iter_audit_batches", "referenced_bodies", "resolve_bodies", "trim_audit"]

Entry = tuple[str, dict[bytes, bytes]]

# Drop everything up to and including the archived entry, and move the chain's base to it, atomically.
# The arguments are checked first, so a bad call writes nothing.
_TRIM = """
local function digits(v) return type(v) == 'string' and #v >= 1 and #v <= 18 and string.find(v, '^%d+$') ~= nil end
if not string.find(ARGV[1], '^%d+%-%d+$') then return redis.error_reply('ERR audit.trim: bad stream id') end
if not digits(ARGV[2]) then return redis.error_reply('ERR audit.trim: seq is not a decimal integer') end
if #ARGV[3] ~= 40 or not string.find(ARGV[3], '^%x+$') then
  return redis.error_reply('ERR audit.trim: hash is not a SHA-1')
end
-- writes
local removed = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
redis.call('HSET', KEYS[2], 'seq', ARGV[2], 'hash', ARGV[3])
return removed
"""
TRIM_SCRIPT = _TRIM


async def iter_audit_batches(redis: Redis, *, start: str = "-", end: str = "+", batch: int = 1000,
                             read_ahead: bool = False) -> AsyncGenerator[list[Entry], None]:
    """The stream in order, one XRANGE reply at a time: a caller holds one batch, never the whole log.

    With ``read_ahead`` the next batch is asked for before this one is handed over, so that Redis reads and
    sends it while the caller works on this one (two batches held). A caller that leaves early closes the
    iterator (``contextlib.aclosing``), which waits for the read in flight.
    """
    def read(cursor: str) -> asyncio.Future[list[tuple[bytes, dict[bytes, bytes]]]]:
        return asyncio.ensure_future(redis.xrange(keys.AUDIT_STREAM, min=cursor, max=end, count=batch))

    pending: asyncio.Future[list[tuple[bytes, dict[bytes, bytes]]]] | None = read(start)
    try:
        while pending is not None:
            chunk, pending = await pending, None
            full = len(chunk) == batch
            if full and read_ahead:
                pending = read("(" + chunk[-1][0].decode())
                await asyncio.sleep(0)  # the read sends its command now, before the caller's work
            if chunk:
                yield [(stream_id.decode(), fields) for stream_id, fields in chunk]
            if full and pending is None:
                pending = read("(" + chunk[-1][0].decode())
    finally:
        if pending is not None:
            with contextlib.suppress(Exception):
                await pending


async def iter_audit(redis: Redis, *, start: str = "-", end: str = "+", batch: int = 1000) -> AsyncIterator[Entry]:
    async for entries in iter_audit_batches(redis, start=start, end=end, batch=batch):
        for entry in entries:
            yield entry


class CorruptPointer(ValueError):
    """The audit head or base hash in Redis does not hold a decimal seq."""


async def _pair(redis: Redis, key: str) -> tuple[int, str]:
    raw = await redis.hgetall(key)  # type: ignore[misc]
    seq = raw.get(b"seq", b"0")
    if not seq.isdigit():
        msg = f"{key} holds seq={seq[:40]!r}, not a decimal integer"
        raise CorruptPointer(msg)
    return int(seq), raw.get(b"hash", GENESIS.encode()).decode("utf-8", "replace")


def referenced_bodies(entries: list[Entry]) -> set[str]:
    """The body digests (hex) that entries reference instead of holding the body."""
    return {f[b"body_ref"].decode() for _, f in entries if f.get(b"body_ref") and not f.get(b"body")}


async def resolve_bodies(redis: Redis, refs: set[str]) -> dict[str, bytes]:
    """The bodies kept once by digest (``keys.audit_body``), for the references given; missing ones left out."""
    wanted = sorted(refs)
    found: dict[str, bytes] = {}
    for start in range(0, len(wanted), 100):
        chunk = wanted[start:start + 100]
        values = await redis.mget([keys.audit_body(r) for r in chunk])
        found.update({r: v for r, v in zip(chunk, values, strict=True) if v is not None})
    return found


def inline_bodies(entries: list[Entry], bodies: dict[str, bytes]) -> list[Entry]:
    """Entries with each resolvable reference replaced by the body itself (what an export file holds)."""
    out: list[Entry] = []
    for stream_id, fields in entries:
        ref = fields.get(b"body_ref", b"").decode()
        if ref and not fields.get(b"body") and ref in bodies:
            fields = {**fields, b"body": bodies[ref]}
        out.append((stream_id, fields))
    return out


async def audit_base(redis: Redis) -> tuple[int, str]:
    """(seq, hash) of the last entry removed by retention; (0, GENESIS) when none was."""
    return await _pair(redis, keys.AUDIT_BASE)


async def audit_head(redis: Redis) -> tuple[int, str]:
    """(seq, hash) of the newest entry: export it elsewhere to anchor the chain."""
    return await _pair(redis, keys.AUDIT_HEAD)


def _write_archive(target: Path, entries: list[Entry], trailer: ExportTrailer) -> None:
    """Atomically (temp file, fsync, rename): a crash leaves the old archive or the whole new one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".audit-")
    with os.fdopen(fd, "w") as f:
        for stream_id, fields in entries:
            f.write(json.dumps(entry_as_json(stream_id, fields)) + "\n")
        f.write(trailer.as_line() + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def _next_id(stream_id: str) -> str:
    ms, seq = stream_id.split("-")
    return f"{ms}-{int(seq) + 1}"


async def trim_audit(redis: Redis, *, older_than_ms: int, archive_dir: Path | None = None, limit: int = 10_000) -> int:
    """Remove entries received before ``older_than_ms``, archiving them first as JSON lines when asked."""
    old: list[tuple[str, dict[bytes, bytes]]] = []
    # At most ``limit`` read per run: a long-lapsed retention is worked off over several sweeps.
    async for entry in iter_audit(redis, end=str(max(older_than_ms - 1, 0)), batch=min(limit, 1000)):
        old.append(entry)
        if len(old) >= limit:
            break
    if not old:
        return 0
    first_seq, last_id, last = old[0][1][b"seq"].decode(), old[-1][0], old[-1][1]
    if archive_dir is not None:
        # Bodies kept once by digest go into the archive inline: it verifies without Redis.
        old = inline_bodies(old, await resolve_bodies(redis, referenced_bodies(old)))
        name = f"audit-{int(first_seq):012d}-{int(last[b'seq']):012d}.jsonl"
        # The same trailer as an export's (without a MAC: a worker need not hold the webhook secret), so an
        # archive file verifies on its own with `audit verify --file` and a cut one is detected.
        trailer = ExportTrailer(count=len(old), base_seq=int(first_seq) - 1,
                                base_hash=old[0][1].get(b"prev", b"").decode(), head_seq=int(last[b"seq"]),
                                head_hash=last[b"hash"].decode(), exported_ms=time.time_ns() // 1_000_000)
        await asyncio.to_thread(_write_archive, archive_dir / name, old, trailer)
    trim = redis.register_script(_TRIM)
    removed = await trim(keys=[keys.AUDIT_STREAM, keys.AUDIT_BASE],
                         args=[_next_id(last_id), last[b"seq"], last[b"hash"]])
    return int(removed)
