"""A poison event: its handler raises every time it runs.

The poison is a transcription.completed whose speech call always fails (the gateway answers 503 to every
/v1/audio/speech request), so the real follow-up handler raises a transient error on every attempt.
Promise: it is dead-lettered after RUNINFRA_MAX_ATTEMPTS attempts, never charged,
and the events delivered after it are not held up: they all finish while the poison is still retrying.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

import pytest

from runinfra_webhooks.service.storage import keys
from tests.fault.harness import (
    IN_FLIGHT,
    deliver_all,
    deployment,
    now_ms,
    records,
    report,
    transcription,
    wait_final,
)
from tests.processes import Proc, stack_env, wait_until
from tests.redis_server import Db, RedisServer
from tests.stubserver import StubServer

pytestmark = pytest.mark.fault

MAX_ATTEMPTS = 5


def test_poison_event_is_dead_lettered_without_delaying_the_rest(
    receiver: str, stub: StubServer, redis_aof: RedisServer, db: Db, tmp_path: Path
) -> None:
    """An event whose handler always fails is dead-lettered after its attempts, uncharged, delaying nothing."""
    stub.set_faults(route="/v1/audio/speech", rates={"503": 1.0}, retry_after=1)
    # Each attempt: a 503, 1 s (Retry-After), a 503, then the job is deferred 1 s: about 2 s per attempt.
    # Few slots, so a poison that held one would show up in the others' latency.
    # A route that answers nothing but 503 is also what an outage looks like, for which the circuit breaker stops
    # counting attempts; its threshold is set out of reach so that this test is about the attempt limit alone.
    env = stack_env(redis_aof.url, stub.base_url, tmp_path / "artifacts", RUNINFRA_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
                    RUNINFRA_GATEWAY_MAX_ATTEMPTS="2", RUNINFRA_RETRY_CAP="1", RUNINFRA_WORKER_CONCURRENCY="4",
                    RUNINFRA_BREAKER_THRESHOLD="1000")
    poison = transcription(0, "poison")
    behind = [deployment(i) for i in range(100)]
    behind_ids = [e["id"] for e in behind]
    worker = Proc(["worker"], env, tmp_path / "worker.log")
    try:
        deliver_all(receiver, [poison])
        wait_until(lambda: stub.calls(), timeout=60, what="the poison's first gateway call")
        sent_ms = now_ms()
        deliver_all(receiver, behind)
        wait_final(db, behind_ids, timeout=60, what="the events behind the poison", procs=[worker])
        poison_then = records(db, [poison["id"]])[poison["id"]]
        [parked] = wait_final(db, [poison["id"]], timeout=120, what="the poison to be dead-lettered",
                              procs=[worker]).values()
    finally:
        worker.terminate()

    after = records(db, behind_ids)
    latencies = sorted((int(r["updated_ms"]) - sent_ms) / 1000 for r in after.values())
    calls = stub.calls()
    poison_keys = {c["idempotency_key"] for c in calls}
    dead_at = int(parked["updated_ms"])
    report("poison_event", events_sent=1 + len(behind), acknowledged=1 + len(behind),
           poison_state=parked["state"], poison_reason=parked["reason"], poison_attempts=int(parked["attempts"]),
           poison_gateway_calls=len(calls), poison_seconds_to_dead_letter=round((dead_at - sent_ms) / 1000, 1),
           poison_state_when_the_rest_had_finished=poison_then["state"],
           behind_processed=sum(r["state"] == "succeeded" for r in after.values()),
           behind_latency_p50_seconds=round(statistics.median(latencies), 2),
           behind_latency_max_seconds=round(latencies[-1], 2), lost=0, charges=stub.charges()["total"])

    assert (parked["state"], parked["reason"]) == ("dead_lettered", "attempts_exhausted"), parked
    assert int(parked["attempts"]) == MAX_ATTEMPTS
    assert "503" in parked["last_error"]
    assert db.zscore(keys.DEAD_LETTERS, poison["id"]) is not None
    assert len(calls) == MAX_ATTEMPTS * 2 and len(poison_keys) == 1  # every retry, the same key
    assert stub.charges()["total"] == 0
    assert Counter(r["state"] for r in after.values()) == {"succeeded": len(behind)}
    assert poison_then["state"] in IN_FLIGHT, "the rest finished only after the poison was dead-lettered"
    assert max(int(r["updated_ms"]) for r in after.values()) < dead_at
