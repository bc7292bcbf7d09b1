"""Genuine audit entries made without a receiver: the fields ingest.lua writes, from the real digest, MAC and
chain code, so that a log of thousands is written in a second and verifies like a received one."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

from runinfra_webhooks.service.core.audit import GENESIS, EntryMac, body_sha256, chain_hash, entry_digest, entry_key
from runinfra_webhooks.service.core.signature import sign
from runinfra_webhooks.service.storage import keys
from tests.builders import SECRET, example_event
from tests.redis_server import Db

# A duplicate's body this long is kept once, by digest (REFERENCE_BODIES_FROM): every so many entries is one.
BIG_BODY = json.dumps(example_event("transcription.completed", note="replayed " * 200)).encode()
DUPLICATE_EVERY = 100
_EVENT = example_event()


def audit_entries(n: int, *, secret: str = SECRET, received_ms: int = 1_764_000_000_000
                  ) -> Iterator[dict[bytes, bytes]]:
    """Entries seq 1..n chained from GENESIS; one in DUPLICATE_EVERY references BIG_BODY by digest."""
    mac = EntryMac(entry_key(secret.encode()))
    prev = GENESIS
    for seq in range(1, n + 1):
        now = received_ms + seq
        duplicate = seq % DUPLICATE_EVERY == 0
        event_id = f"evt_fill_{seq:09d}"
        body = BIG_BODY if duplicate else json.dumps({**_EVENT, "id": event_id}).encode()
        outcome = "duplicate" if duplicate else "queued"
        header = sign(body, secret, now // 1000).encode()
        delivery_id, request_id = uuid.uuid4().hex, f"req_{seq:09d}"
        digest = entry_digest(event_id=event_id, received_ms=now, request_id=request_id, secret_index=0,
                              header=header, body=body, delivery_id=delivery_id, body_hash=body_sha256(body))
        hash_ = chain_hash(prev, seq, outcome, digest)
        entry = {
            b"seq": str(seq).encode(), b"prev": prev.encode(), b"hash": hash_.encode(), b"outcome": outcome.encode(),
            b"event_id": event_id.encode(), b"received_ms": str(now).encode(), b"request_id": request_id.encode(),
            b"secret_index": b"0", b"header": header, b"body": b"" if duplicate else body,
            b"digest": digest.encode(), b"delivery_id": delivery_id.encode(), b"mac": mac(outcome, digest).encode(),
        }
        if duplicate:
            entry[b"body_ref"] = body_sha256(body).hex().encode()
        yield entry
        prev = hash_


def fill_audit(db: Db, n: int) -> tuple[int, str]:
    """Write a log of n entries (and the body they reference) with pipelined XADDs; the head (seq, hash)."""
    db.set(keys.audit_body(body_sha256(BIG_BODY).hex()), BIG_BODY)
    pipe = db.pipeline(transaction=False)
    head = (0, GENESIS)
    for entry in audit_entries(n):
        pipe.xadd(keys.AUDIT_STREAM, entry)  # type: ignore[arg-type]
        head = (int(entry[b"seq"]), entry[b"hash"].decode())
        if head[0] % 1000 == 0:
            pipe.execute()
    pipe.hset(keys.AUDIT_HEAD, mapping={"seq": head[0], "hash": head[1]})
    pipe.execute()
    return head
