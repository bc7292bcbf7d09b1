"""Reading the console's indexes: pages of events by time, state, type and id prefix, without a scan.

A page walks sorted sets newest first (the state's, the type's, or all the state sets merged: together
they are the time index of every retained event), from a cursor that is the (score, id) of the last event
shown, so paging stays stable while events arrive. A filter on both state and type walks the smaller of
the two and checks membership in the other, a bounded number of entries per page; an id prefix reads the
id index (at most ``PREFIX_CAP`` matches) and sorts those.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.event_index import STATES
from runinfra_webhooks.service.storage.records import EventRecord

__all__ = ["PREFIX_CAP", "BadCursor", "Cursor", "EventFilter", "EventIndex", "Page"]

PREFIX_CAP = 1000  # ids read for one id-prefix search; a longer prefix narrows it
SCAN_BUDGET = 5000  # index entries one page may look at for a state + type filter
TIE_CAP = 10_000  # events received in the same millisecond that one page can step over
_LIST_FIELDS = ("id", "type", "created", "state", "attempts", "generation", "received_ms", "updated_ms",
                "reason", "last_error")


class BadCursor(ValueError):
    """A cursor that this console did not make."""


@dataclass(frozen=True, slots=True)
class Cursor:
    score: int
    event_id: str

    def encode(self) -> str:
        return base64.urlsafe_b64encode(f"{self.score}:{self.event_id}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            score, event_id = raw.split(":", 1)
            return cls(int(score), event_id)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            msg = "cursor is not one this console made"
            raise BadCursor(msg) from None


@dataclass(frozen=True, slots=True)
class EventFilter:
    state: str | None = None
    type: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    q: str | None = None

    def as_query(self) -> dict[str, str]:
        out = {"state": self.state, "type": self.type, "q": self.q,
               "since": None if self.since_ms is None else str(self.since_ms // 1000),
               "until": None if self.until_ms is None else str(self.until_ms // 1000)}
        return {k: v for k, v in out.items() if v}


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


def _before(score: int, member: str, cursor: Cursor | None) -> bool:
    return cursor is None or (score, member) < (cursor.score, cursor.event_id)


class EventIndex:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    # --- pages -----------------------------------------------------------------------------------
    async def page(self, f: EventFilter, cursor: Cursor | None = None, limit: int = 50) -> Page:
        if f.q:
            hits = await self._prefix_hits(f)
        else:
            hits, more_from = await self._walk(f, cursor, limit + 1)
            if more_from is not None and len(hits) <= limit:
                # The scan budget ran out before the page filled: go on from where it stopped.
                items = await self._hydrate(hits, f)
                return Page(items, more_from.encode())
        hits = [h for h in hits if _before(h[0], h[1], cursor)]
        page, rest = hits[:limit], hits[limit:]
        items = await self._hydrate(page, f)
        nxt = Cursor(page[-1][0], page[-1][1]).encode() if rest and page else None
        return Page(items, nxt)

    async def iter_ids(self, f: EventFilter, batch: int = 500) -> AsyncIterator[str]:
        """Every matching event id, newest first (for replaying all that match)."""
        cursor: Cursor | None = None
        while True:
            page = await self.page(f, cursor, batch)
            for item in page.items:
                yield item["event_id"]
            if page.next_cursor is None:
                return
            cursor = Cursor.decode(page.next_cursor)

    async def count(self, f: EventFilter) -> int:
        if f.state and not (f.type or f.q):
            return int(await self.redis.zcount(keys.ix_state(f.state), *self._range(f)))
        if f.type and not (f.state or f.q):
            return int(await self.redis.zcount(keys.ix_type(f.type), *self._range(f)))
        if not (f.state or f.type or f.q):
            pipe = self.redis.pipeline(transaction=False)
            for state in STATES:
                pipe.zcount(keys.ix_state(state), *self._range(f))
            return sum(int(n) for n in await pipe.execute())
        return len([i async for i in self.iter_ids(f)])

    @staticmethod
    def _range(f: EventFilter) -> tuple[int | str, int | str]:
        return (f.since_ms if f.since_ms is not None else "-inf", f.until_ms if f.until_ms is not None else "+inf")

    async def _primary(self, f: EventFilter) -> tuple[list[str], str | None]:
        """The sets to walk, and the set whose membership a hit must also have."""
        if f.state and f.type:
            a, b = keys.ix_state(f.state), keys.ix_type(f.type)
            pipe = self.redis.pipeline(transaction=False)
            pipe.zcard(a)
            pipe.zcard(b)
            ca, cb = await pipe.execute()
            return ([a], b) if ca <= cb else ([b], a)
        if f.state:
            return [keys.ix_state(f.state)], None
        if f.type:
            return [keys.ix_type(f.type)], None
        return [keys.ix_state(s) for s in STATES], None

    async def _walk(self, f: EventFilter, cursor: Cursor | None, want: int
                    ) -> tuple[list[tuple[int, str]], Cursor | None]:
        """Up to ``want`` matching (score, id) older than ``cursor``; the second value is set when the scan
        budget ran out first (where to go on from)."""
        primary, secondary = await self._primary(f)
        low, high = self._range(f)
        hits: list[tuple[int, str]] = []
        scanned = 0
        position = cursor
        while len(hits) < want:
            chunk = await self._read(primary, position, low, high, want if secondary is None else 500)
            if not chunk:
                return hits, None
            scanned += len(chunk)
            if secondary is not None:
                present = await self.redis.zmscore(secondary, [m for _, m in chunk])
                hits.extend(c for c, p in zip(chunk, present, strict=True) if p is not None)
            else:
                hits.extend(chunk)
            position = Cursor(*chunk[-1])
            if scanned >= SCAN_BUDGET and len(hits) < want:
                return hits, position
        return hits[:want], None

    async def _read(self, sets: list[str], upper: Cursor | None, low: int | str, high: int | str, count: int
                    ) -> list[tuple[int, str]]:
        """Up to ``count`` entries of ``sets`` (merged) strictly before ``upper``, in (score, id) descending."""
        pipe = self.redis.pipeline(transaction=False)
        for key in sets:
            if upper is None:
                # redis-py types the bounds as int; BYSCORE and BYLEX take "(", "[" and "inf" strings too.
                pipe.zrange(key, high, low, desc=True, byscore=True, offset=0, num=count,  # type: ignore[arg-type]
                            withscores=True)
                continue
            top = upper.score if high == "+inf" else min(upper.score, int(high))
            if top == upper.score:
                pipe.zrange(key, top, top, desc=True, byscore=True, offset=0, num=TIE_CAP, withscores=True)
            pipe.zrange(key, f"({top}" if top == upper.score else top, low,  # type: ignore[arg-type]
                        desc=True, byscore=True, offset=0, num=count, withscores=True)
        out: list[tuple[int, str]] = []
        for rows in await pipe.execute():
            for member, score in rows:
                entry = (int(score), member.decode())
                if _before(entry[0], entry[1], upper):
                    out.append(entry)
        if len(sets) > 1:
            out.sort(reverse=True)
        return out[:count]

    async def _prefix_hits(self, f: EventFilter) -> list[tuple[int, str]]:
        assert f.q is not None
        ids = await self.redis.zrange(keys.IX_IDS, f"[{f.q}", f"[{f.q}\xff",  # type: ignore[arg-type]
                                      bylex=True, offset=0, num=PREFIX_CAP)
        if not ids:
            return []
        names = [i.decode() for i in ids]
        primary, secondary = await self._primary(f)
        pipe = self.redis.pipeline(transaction=False)
        for key in primary:
            pipe.zmscore(key, names)
        if secondary is not None:
            pipe.zmscore(secondary, names)
        replies = await pipe.execute()
        found = [next((r[i] for r in replies[:len(primary)] if r[i] is not None), None) for i in range(len(names))]
        also = replies[len(primary)] if secondary is not None else [0] * len(names)
        low = f.since_ms if f.since_ms is not None else -1
        high = f.until_ms if f.until_ms is not None else 1 << 62
        hits = [(int(s), n) for s, n, o in zip(found, names, also, strict=True)
                if s is not None and o is not None and low <= s <= high]
        hits.sort(reverse=True)
        return hits

    async def _hydrate(self, hits: list[tuple[int, str]], f: EventFilter) -> list[dict[str, Any]]:
        if not hits:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for _, event_id in hits:
            pipe.hmget(keys.event(event_id), list(_LIST_FIELDS))
        out = []
        seen: set[bytes] = set()
        for values in await pipe.execute():
            if values[0] is None or values[0] in seen:
                continue  # expired a moment ago (the sweep drops its entries), or listed already
            seen.add(values[0])
            row = {name: (v.decode("utf-8", "replace") if v is not None else "")
                   for name, v in zip(_LIST_FIELDS, values, strict=True)}
            if (f.state and row["state"] != f.state) or (f.type and row["type"] != f.type):
                continue
            out.append({
                "event_id": row["id"], "type": row["type"], "state": row["state"],
                "created": int(row["created"] or 0), "attempts": int(row["attempts"] or 0),
                "generation": int(row["generation"] or 0), "received_ms": int(row["received_ms"] or 0),
                "updated_ms": int(row["updated_ms"] or 0), "reason": row["reason"] or None,
                "last_error": row["last_error"] or None,
            })
        return out

    # --- one event -------------------------------------------------------------------------------
    async def detail(self, event_id: str) -> dict[str, Any] | None:
        """What ``events show`` prints, plus the history, the gateway calls, the envelope and its audit entry."""
        raw = await self.redis.hgetall(keys.event(event_id))  # type: ignore[misc]
        if not raw:
            return None
        record = EventRecord.from_hash(raw)
        out = record.as_json()
        out["history"] = _lines(raw.get(b"history"))
        out["gateway_calls"] = _lines(raw.get(b"gateway_calls"))
        body = record.body.decode("utf-8", "replace")
        try:
            out["envelope"] = json.loads(body)
        except ValueError:
            out["envelope"] = None
        out["body"] = body
        audit_id = raw.get(b"audit_id")
        out["audit"] = None
        if audit_id is not None:
            rows = await self.redis.xrange(keys.AUDIT_STREAM, min=audit_id, max=audit_id, count=1)
            if rows:
                fields = rows[0][1]
                out["audit"] = {
                    "stream_id": audit_id.decode(), "seq": int(fields[b"seq"]), "hash": fields[b"hash"].decode(),
                    "prev": fields[b"prev"].decode(), "outcome": fields[b"outcome"].decode(),
                    "signature_header": fields[b"header"].decode("utf-8", "replace"),
                    "request_id": fields[b"request_id"].decode(),
                }
            else:
                out["audit"] = {"stream_id": audit_id.decode(), "trimmed": True}
        # The first entry (the delivery's outcome) is not written at ingest, to keep that path lean: it is
        # the audit entry's outcome, or what a first worker transition implies.
        first = (out["audit"] or {}).get("outcome")
        if first is None:
            first = record.state if not out["history"] else "queued"
        out["history"].insert(0, {"at": record.received_ms, "state": first, "attempt": 0, "generation": 0,
                                  "error": record.reason if first == "dead_lettered" and not out["history"] else ""})
        return out

    # --- the overview ----------------------------------------------------------------------------
    async def stats(self, now_ms: int) -> dict[str, Any]:
        minute_now = now_ms // 60_000
        minutes = list(range(minute_now - 59, minute_now + 1))
        pipe = self.redis.pipeline(transaction=False)
        for state in STATES:
            pipe.zcard(keys.ix_state(state))
        pipe.zcard(keys.ARQ_QUEUE)
        pipe.zrange(keys.ARQ_QUEUE, 0, 0, withscores=True)
        pipe.zcard(keys.DEAD_LETTERS)
        pipe.hmget(keys.AUDIT_HEAD, ["seq", "hash"])
        for m in minutes:
            for state in STATES:
                pipe.zcount(keys.ix_state(state), m * 60_000, m * 60_000 + 59_999)
        res = await pipe.execute()
        states = dict(zip(STATES, (int(n) for n in res[:len(STATES)]), strict=True))
        depth, oldest, dead, head = res[len(STATES):len(STATES) + 4]
        per_minute = res[len(STATES) + 4:]
        oldest_age = max(0.0, (now_ms - oldest[0][1]) / 1000) if oldest else None
        n = len(STATES)
        return {
            "states": states,
            "retained_events": sum(states.values()),
            "queue_depth": int(depth),
            "oldest_queued_age_s": oldest_age,
            "dead_letters": int(dead),
            "audit_head": {"seq": int(head[0] or 0), "hash": (head[1] or b"").decode() or None},
            # Events received in each minute, by the state they are in now.
            "deliveries_last_hour": [
                {"minute": m * 60, **{s: int(c) for s, c in zip(STATES, per_minute[i * n:(i + 1) * n], strict=True)
                                      if c}}
                for i, m in enumerate(minutes)
            ],
        }

    async def types(self, known: frozenset[str] = frozenset()) -> list[str]:
        """Types to offer in a filter: ``known`` (the catalogue) and every type a worker has seen."""
        seen = {t.decode() for t in await self.redis.smembers(keys.IX_TYPES)}  # type: ignore[misc]
        return sorted(seen | known)


def _lines(raw: bytes | None) -> list[Any]:
    if not raw:
        return []
    out = []
    for line in raw.decode("utf-8", "replace").split("\n"):
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
