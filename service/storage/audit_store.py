"""Reading, exporting and trimming the audit stream in Redis (the pure rules live in service.audit)."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from redis.asyncio import Redis
from runinfra_webhooks.service.core.audit import GENESIS, entry_as_json
from runinfra_webhooks.service.storage import keys

__all__ = ["audit_base", "audit_head", "iter_audit", "trim_audit"]

Entry = tuple[str, dict[bytes, bytes]]

# Drop everything up to and including the archived entry, and move the chain's base to it, atomically.
_TRIM = """
local removed = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
redis.call('HSET', KEYS[2], 'seq', ARGV[2], 'hash', ARGV[3])
return removed
"""


async def iter_audit(redis: Redis, *, start: str = "-", end: str = "+", batch: int = 1000) -> AsyncIterator[Entry]:
    cursor = start
    while True:
        chunk = await redis.xrange(keys.AUDIT_STREAM, min=cursor, max=end, count=batch)
        for stream_id, fields in chunk:
            yield stream_id.decode(), fields
        if len(chunk) < batch:
            return
        cursor = "(" + chunk[-1][0].decode()


async def _pair(redis: Redis, key: str) -> tuple[int, str]:
    raw = await redis.hgetall(key)  # type: ignore[misc]
    return int(raw.get(b"seq", b"0")), raw.get(b"hash", GENESIS.encode()).decode()


async def audit_base(redis: Redis) -> tuple[int, str]:
    """(seq, hash) of the last entry removed by retention; (0, GENESIS) when none was."""
    return await _pair(redis, keys.AUDIT_BASE)


async def audit_head(redis: Redis) -> tuple[int, str]:
    """(seq, hash) of the newest entry: export it elsewhere to anchor the chain."""
    return await _pair(redis, keys.AUDIT_HEAD)


def _write_archive(target: Path, entries: list[Entry]) -> None:
    """Atomically (temp file, fsync, rename): a crash leaves the old archive or the whole new one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".audit-")
    with os.fdopen(fd, "w") as f:
        for stream_id, fields in entries:
            f.write(json.dumps(entry_as_json(stream_id, fields)) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def _next_id(stream_id: str) -> str:
    ms, seq = stream_id.split("-")
    return f"{ms}-{int(seq) + 1}"


async def trim_audit(redis: Redis, *, older_than_ms: int, archive_dir: Path | None = None, limit: int = 10_000) -> int:
    """Remove entries received before ``older_than_ms``, archiving them first as JSON lines when asked."""
    old = [e async for e in iter_audit(redis, end=str(max(older_than_ms - 1, 0)), batch=min(limit, 1000))]
    old = old[:limit]
    if not old:
        return 0
    first_seq, last_id, last = old[0][1][b"seq"].decode(), old[-1][0], old[-1][1]
    if archive_dir is not None:
        name = f"audit-{int(first_seq):012d}-{int(last[b'seq']):012d}.jsonl"
        await asyncio.to_thread(_write_archive, archive_dir / name, old)
    trim = redis.register_script(_TRIM)
    removed = await trim(keys=[keys.AUDIT_STREAM, keys.AUDIT_BASE],
                         args=[_next_id(last_id), last[b"seq"], last[b"hash"]])
    return int(removed)
