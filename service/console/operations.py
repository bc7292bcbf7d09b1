"""What the console does to stored state: replay (the CLI's operation) and verifying the audit log."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis

from runinfra_webhooks.service.core.audit import BodyLookup, ChainVerifier
from runinfra_webhooks.service.storage.audit_store import (
    audit_base,
    audit_head,
    iter_audit,
    referenced_bodies,
    resolve_bodies,
)
from runinfra_webhooks.service.storage.listing import EventFilter, EventIndex
from runinfra_webhooks.service.storage.records import Records, ReplayRefused

__all__ = ["ReplayRefused", "replay_matching", "replay_one", "verify_audit"]

_BATCH = 100  # replays sent together (they share round trips through the records' coalescer)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def replay_one(records: Records, event_id: str) -> int:
    """Re-queue one dead-lettered event under a new key generation; raises ReplayRefused otherwise."""
    return await records.replay(event_id, _now_ms())


async def _replay_quietly(records: Records, event_id: str) -> bool:
    try:
        await records.replay(event_id, _now_ms())
    except ReplayRefused:
        return False
    return True


async def replay_matching(records: Records, index: EventIndex, f: EventFilter, *, dry_run: bool,
                          ids: list[str] | None = None) -> dict[str, Any]:
    """Count (and unless ``dry_run`` replay) the dead-lettered events matching ``f`` (or among ``ids``)."""
    f = replace(f, state="dead_lettered")
    if ids is not None:
        matched = [i for i in dict.fromkeys(ids) if await _is_dead(records, i)]
    else:
        matched = [i async for i in index.iter_ids(f)]
    replayed = 0
    if not dry_run:
        for start in range(0, len(matched), _BATCH):
            done = await asyncio.gather(*(_replay_quietly(records, i) for i in matched[start:start + _BATCH]))
            replayed += sum(done)
    return {"matched": len(matched), "count": len(matched), "replayed": replayed, "dry_run": dry_run}


async def _is_dead(records: Records, event_id: str) -> bool:
    record = await records.get(event_id)
    return record is not None and record.state == "dead_lettered"


async def verify_audit(redis: Redis, *, secrets: tuple[bytes, ...], tolerance: int,
                       chunk: int = 10_000) -> dict[str, Any]:
    """The checks of ``audit verify``: every entry's signature and the chain from its base to the head.

    In chunks, each one's base the previous one's last entry, checked in a thread: memory stays bounded
    and the console keeps answering while a long log is verified.
    """
    base_seq, base_hash = await audit_base(redis)
    head = await audit_head(redis)
    result: dict[str, Any] = {"ok": True, "checked": 0, "head": {"seq": head[0], "hash": head[1]},
                              "base": {"seq": base_seq, "hash": base_hash}, "problem": None}
    if not secrets:
        result["ok"] = False
        result["problem"] = {"seq": 0, "stream_id": None, "code": "no_secret",
                             "detail": "RUNINFRA_WEBHOOK_SECRET is not set: signatures and MACs cannot be checked"}
        return result
    # One verifier across the chunks: the delivery ids seen and whether MACs began carry over a chunk's border.
    verifier = ChainVerifier(secrets=secrets, tolerance=tolerance, base_seq=base_seq, base_hash=base_hash)
    last_id: str | None = None
    entries: list[tuple[str, dict[bytes, bytes]]] = []

    def feed(bodies: BodyLookup) -> None:
        for stream_id, fields in entries:
            if verifier.feed(stream_id, fields, bodies) is not None:
                return

    async def check() -> bool:
        nonlocal last_id
        # Duplicates keep their body once, by digest: resolve those this chunk references.
        bodies = await resolve_bodies(redis, referenced_bodies(entries))
        await asyncio.to_thread(feed, bodies.get)
        result["checked"] = verifier.checked
        problem = verifier.problem
        if problem is not None:
            result["ok"] = False
            result["problem"] = {"seq": problem.seq, "stream_id": problem.stream_id, "code": problem.code,
                                 "detail": problem.detail}
            return False
        last_id = entries[-1][0]
        entries.clear()
        return True

    async for entry in iter_audit(redis):
        entries.append(entry)
        if len(entries) >= chunk and not await check():
            return result
    if entries and not await check():
        return result
    last = verifier.last
    if last != head:
        result["ok"] = False
        result["problem"] = {"seq": last[0], "stream_id": last_id, "code": "head_mismatch",
                             "detail": "the newest entry is not the recorded head: entries were removed at the end"}
    return result
