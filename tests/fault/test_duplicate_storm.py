"""Duplicate storm: 1,000 concurrent deliveries of 100 distinct events -> 100 queued, 900 duplicates,
100 reactions, 100 charges (deduplication, and one charge per logical call)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from runinfra_webhooks.service.storage import keys
from tests.builders import signed_delivery
from tests.fault.harness import (
    charges,
    post_concurrently,
    report,
    scaled,
    settled_charges,
    shuffled,
    transcription,
    wait_final,
    workers,
)
from tests.redis_server import Db
from tests.stubserver import StubServer

pytestmark = pytest.mark.fault


def test_a_duplicate_storm_queues_runs_and_charges_each_event_once(
    receiver: str, env: dict[str, str], stub: StubServer, db: Db, tmp_path: Path
) -> None:
    """1,000 concurrent deliveries of 100 events: each queued once, run once and charged once."""
    distinct, copies = scaled(100), 10
    events = [transcription(i, "storm") for i in range(distinct)]
    # Each copy is signed on its own, as RunInfra's retries are; all of them are in flight at once.
    bodies = shuffled([signed_delivery(e) for e in events for _ in range(copies)], seed=1)
    ids = [e["id"] for e in events]

    with workers(env, tmp_path) as procs:
        started = time.monotonic()
        answers = post_concurrently(receiver, bodies)
        storm_s = time.monotonic() - started
        outcomes = Counter(a["status"] for a in answers)
        queued_per_event = Counter(a["event_id"] for a in answers if a["status"] == "queued")
        final = wait_final(db, ids, timeout=120, what="the storm's events to finish", procs=procs)
        processed_s = time.monotonic() - started

    processed = sum(r["state"] == "succeeded" for r in final.values())
    audit = Counter(fields[b"outcome"].decode() for _, fields in db.xrange(keys.AUDIT_STREAM))
    c = settled_charges(stub, expected=distinct)
    report("duplicate_storm", deliveries=len(bodies), distinct_events=distinct, queued=outcomes["queued"],
           duplicates=outcomes["duplicate"], other_answers=len(bodies) - outcomes["queued"] - outcomes["duplicate"],
           processed=processed, lost=distinct - processed, charges=c.total, double_charged=c.double_charged,
           audit_entries=sum(audit.values()), storm_seconds=round(storm_s, 2),
           all_processed_seconds=round(processed_s, 2))

    assert outcomes == {"queued": distinct, "duplicate": distinct * (copies - 1)}, outcomes
    assert set(queued_per_event) == set(ids) and set(queued_per_event.values()) == {1}
    assert processed == distinct, Counter(r["state"] for r in final.values())
    assert c.total == distinct and c.keys == distinct and c.double_charged == 0, charges(stub)
    assert audit == {"queued": distinct, "duplicate": distinct * (copies - 1)}
    assert db.zcard(keys.ARQ_QUEUE) == 0 and db.zcard(keys.INFLIGHT) == 0
