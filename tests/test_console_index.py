"""The console's indexes in Redis: kept by the state-changing scripts, trimmed with the records' retention."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from runinfra_webhooks.service.console.operations import verify_audit
from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.event_index import HISTORY_MAX_BYTES, needs_rebuild, rebuild, trim_expired
from runinfra_webhooks.service.storage.ingest import Delivery, Ingestor, IngestOutcome
from runinfra_webhooks.service.storage.listing import Cursor, EventFilter, EventIndex
from runinfra_webhooks.service.storage.records import Records
from tests.builders import OLD_SECRET, SECRET, example_event, signed_delivery


def _now() -> int:
    return time.time_ns() // 1_000_000


def _delivery(event_id: str, wanted: IngestOutcome = IngestOutcome.QUEUED, type_: str = "deployment.ready",
              at: int | None = None) -> Delivery:
    return Delivery(wanted, event_id, type_, 1, b"t=1,v1=00", b'{"id":"%s"}' % event_id.encode(), "req", 0,
                    at if at is not None else _now(), reason="invalid_payload" if wanted == "dead_lettered" else "")


def _stores(redis: Redis, retention: int = 3600) -> tuple[Ingestor, Records]:
    return (Ingestor(redis, dedup_ttl=1, event_retention=retention, dead_letter_retention=retention,
                     job_expiry_s=60, secrets=(SECRET.encode(), OLD_SECRET.encode())),
            Records(redis, event_retention=retention, dead_letter_retention=retention, job_expiry_s=60))


async def _members(redis: Redis, key: str) -> list[str]:
    return [m.decode() for m in await redis.zrange(key, 0, -1)]


async def test_index_follows_every_state_transition(redis: Redis) -> None:
    """Each event is in exactly one state index, the one its record says, through start, retry, dead, replay."""
    ingestor, records = _stores(redis)
    await ingestor.ingest(_delivery("evt_a"))
    now = _now()
    steps: list[tuple[Callable[[], Awaitable[object]], str]] = [
        (lambda: records.start("evt_a", 0, now + 1), "processing"),
        (lambda: records.retrying("evt_a", 0, now + 2, "TransientError"), "retrying"),
        (lambda: records.start("evt_a", 0, now + 3), "processing"),
        (lambda: records.dead_lettered("evt_a", 0, now + 4, "gateway_bad_request", "400"), "dead_lettered"),
        (lambda: records.replay("evt_a", now + 5), "queued"),
        (lambda: records.start("evt_a", 1, now + 6), "processing"),
        (lambda: records.succeeded("evt_a", 1, now + 7), "succeeded"),
    ]
    for step, state in steps:
        await step()
        holding = [s for s in ("queued", "processing", "retrying", "succeeded", "dead_lettered", "ignored")
                   if "evt_a" in await _members(redis, keys.ix_state(s))]
        assert holding == [state]
    detail = await EventIndex(redis).detail("evt_a")
    assert detail is not None
    assert [h["state"] for h in detail["history"]] == ["queued", *(s for _, s in steps)]
    assert detail["history"][4]["error"] == "400"
    assert detail["history"][5]["generation"] == 1


async def test_a_stale_generation_changes_no_index(redis: Redis) -> None:
    """A late job of a replaced generation is refused by its script, and the indexes stay as they were."""
    ingestor, records = _stores(redis)
    await ingestor.ingest(_delivery("evt_b"))
    await records.start("evt_b", 0, _now())
    await records.dead_lettered("evt_b", 0, _now(), "lost", "gone")
    await records.replay("evt_b", _now())
    assert not await records.succeeded("evt_b", 0, _now())
    assert await _members(redis, keys.ix_state("queued")) == ["evt_b"]
    assert await _members(redis, keys.ix_state("succeeded")) == []


async def test_duplicates_and_invalid_bodies_add_no_index_entry(redis: Redis) -> None:
    """Only stored events are indexed: a duplicate and an invalid body add nothing."""
    ingestor, _ = _stores(redis)
    now = _now()
    await ingestor.ingest(_delivery("evt_c", at=now))
    assert await ingestor.ingest(_delivery("evt_c", at=now)) == IngestOutcome.DUPLICATE
    await ingestor.ingest(_delivery("", IngestOutcome.INVALID_JSON, at=now))
    assert await _members(redis, keys.IX_IDS) == ["evt_c"]
    assert await _members(redis, keys.ix_state("queued")) == ["evt_c"]
    assert (await EventIndex(redis).stats(now))["deliveries_last_hour"][-1] == {"minute": now // 60_000 * 60,
                                                                                "queued": 1}


async def test_sweep_trim_drops_entries_of_expired_records_only(redis: Redis) -> None:
    """Once a record's TTL has run out, trim_expired removes it from every index; live ones stay listed."""
    ingestor, records = _stores(redis, retention=1)
    await ingestor.ingest(_delivery("evt_gone", IngestOutcome.IGNORED, type_="other.kind"))
    await ingestor.ingest(_delivery("evt_live"))
    await records.start("evt_live", 0, _now())
    assert await redis.zcard(keys.IX_EXPIRY) == 1
    assert 0 < await redis.pttl(keys.event("evt_gone")) <= 1000
    await redis.delete(keys.event("evt_gone"))  # what its TTL does a second later
    assert await trim_expired(redis, _now() + 1500) == 1
    for key in (keys.IX_IDS, keys.ix_type("other.kind"), keys.ix_state("ignored"), keys.IX_EXPIRY):
        assert "evt_gone" not in " ".join(await _members(redis, key)), key
    assert await _members(redis, keys.ix_state("processing")) == ["evt_live"]
    page = await EventIndex(redis).page(EventFilter())
    assert [i["event_id"] for i in page.items] == ["evt_live"]


async def test_trim_redates_an_entry_whose_record_still_lives(redis: Redis) -> None:
    """An expiry entry that comes due early (clocks differ) is moved to the record's real expiry, not dropped."""
    ingestor, _ = _stores(redis, retention=3600)
    await ingestor.ingest(_delivery("evt_d", IngestOutcome.IGNORED))
    await redis.zadd(keys.IX_EXPIRY, {"evt_d deployment.ready": 0})
    assert await trim_expired(redis, _now()) == 0
    score = await redis.zscore(keys.IX_EXPIRY, "evt_d deployment.ready")
    assert score is not None and score > _now() + 3_000_000
    assert await _members(redis, keys.ix_state("ignored")) == ["evt_d"]


async def test_a_received_again_id_is_listed_once_under_its_new_state(redis: Redis) -> None:
    """An id received again after its dedup mark expired lists once, as queued; the trim drops the old entry."""
    ingestor, _ = _stores(redis)
    await ingestor.ingest(_delivery("evt_e", IngestOutcome.DEAD_LETTERED))
    await redis.delete(keys.dedup("evt_e"))
    assert await ingestor.ingest(_delivery("evt_e")) == IngestOutcome.QUEUED
    index = EventIndex(redis)
    assert [(i["event_id"], i["state"]) for i in (await index.page(EventFilter())).items] == [("evt_e", "queued")]
    assert (await index.page(EventFilter(state="dead_lettered"))).items == []
    await trim_expired(redis, _now() + 3_601_000)  # when the old record would have expired
    assert await _members(redis, keys.ix_state("dead_lettered")) == []
    assert await _members(redis, keys.ix_state("queued")) == ["evt_e"]


async def test_history_is_capped_for_an_event_retried_forever(redis: Redis) -> None:
    """Hundreds of transitions keep only the newest history entries, within the byte cap."""
    ingestor, records = _stores(redis)
    await ingestor.ingest(_delivery("evt_f"))
    for i in range(300):
        await records.start("evt_f", 0, _now())
        await records.retrying("evt_f", 0, _now(), f"TransientError {i}")
    raw = await redis.hget(keys.event("evt_f"), "history")  # type: ignore[misc]
    assert raw is not None and len(raw) <= HISTORY_MAX_BYTES
    detail = await EventIndex(redis).detail("evt_f")
    assert detail is not None and detail["history"][-1]["error"] == "TransientError 299"


async def test_a_combined_filter_on_a_sparse_match_pages_on_with_a_cursor(redis: Redis) -> None:
    """state + type with few matches among many: pages stay bounded, the cursor reaches the old match."""
    ingestor, _ = _stores(redis)
    now = _now()
    await ingestor.ingest(_delivery("evt_rare", type_="deployment.failed", at=now - 100_000))
    pipe = redis.pipeline(transaction=False)
    for i in range(6000):  # newer common events, written straight into the indexes
        pipe.zadd(keys.ix_state("queued"), {f"evt_n{i:05d}": now - i})
        pipe.zadd(keys.ix_type("deployment.ready"), {f"evt_n{i:05d}": now - i})
        pipe.zadd(keys.ix_type("deployment.failed"), {f"evt_f{i:05d}": now - i})
        pipe.zadd(keys.ix_state("succeeded"), {f"evt_f{i:05d}": now - i})
    await pipe.execute()
    index, f = EventIndex(redis), EventFilter(state="queued", type="deployment.failed")
    found: list[str] = []
    cursor: Cursor | None = None
    for _ in range(5):
        page = await index.page(f, cursor)
        found += [i["event_id"] for i in page.items]
        if page.next_cursor is None:
            break
        cursor = Cursor.decode(page.next_cursor)
    assert found == ["evt_rare"]


async def test_rebuild_indexes_records_written_before_the_indexes_existed(redis: Redis) -> None:
    """Records with no index entries (older data) are found by needs_rebuild and listed after rebuild."""
    now = _now()
    for i, state in enumerate(("succeeded", "dead_lettered", "queued")):
        await redis.hset(keys.event(f"evt_old{i}"), mapping={  # type: ignore[misc]
            "id": f"evt_old{i}", "type": "deployment.ready", "state": state, "received_ms": now + i})
    await redis.expire(keys.event("evt_old0"), 600)
    assert await needs_rebuild(redis)
    assert await rebuild(redis, now) == 3
    assert await rebuild(redis, now) == 3  # again: the same entries, nothing doubled
    assert not await needs_rebuild(redis)
    index = EventIndex(redis)
    assert [i["event_id"] for i in (await index.page(EventFilter())).items] == ["evt_old2", "evt_old1", "evt_old0"]
    assert [i["event_id"] for i in (await index.page(EventFilter(state="dead_lettered"))).items] == ["evt_old1"]
    assert await redis.zcard(keys.IX_EXPIRY) == 1


async def test_audit_verify_in_chunks_checks_the_chain_across_chunk_borders(redis: Redis) -> None:
    """Verified 2 entries at a time, a 5-entry log is ok; with its third entry removed, the fourth fails."""
    ingestor, _ = _stores(redis)
    for i in range(5):
        body, headers = signed_delivery(example_event(id=f"evt_v{i}"))
        await ingestor.ingest(Delivery(IngestOutcome.QUEUED, f"evt_v{i}", "deployment.ready", 1,
                                       headers["runinfra-signature"].encode(), body, "req", 0, _now()))
    args: dict[str, Any] = {"secrets": (SECRET.encode(),), "tolerance": 300, "chunk": 2}
    good = await verify_audit(redis, **args)
    assert (good["ok"], good["checked"], good["head"]["seq"]) == (True, 5, 5)
    third = (await redis.xrange(keys.AUDIT_STREAM, count=3))[2][0]
    await redis.xdel(keys.AUDIT_STREAM, third)
    bad = await verify_audit(redis, **args)
    assert bad["ok"] is False and bad["problem"]["seq"] == 4 and bad["checked"] == 2
