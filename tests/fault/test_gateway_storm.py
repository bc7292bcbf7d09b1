"""Gateway storm: 30 % of gateway calls answer 5xx or 429, or time out.

Promise: transient failures are retried with the same Idempotency-Key (inline, then by the
job), so every event ends succeeded and every logical call is charged exactly once. Each event makes two
logical calls here (a chat reply, then speech), so a retry after the first succeeded must not repeat it.

The worst kind of timeout is also in: every real speech inference takes 1.2 s, longer than the client's
1 s timeout, so the gateway charges a call whose answer the worker never saw; the retry (same key) must
get the stored answer replayed, not a second charge.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.fault.harness import (
    charges,
    deliver_all,
    report,
    scaled,
    settled_charges,
    transcription,
    wait_final,
    workers,
)
from tests.processes import stack_env
from tests.redis_server import Db, RedisServer
from tests.stubserver import StubServer

pytestmark = pytest.mark.fault

RATES = {"500": 0.06, "502": 0.04, "503": 0.05, "429": 0.09, "timeout": 0.06}  # 30 % in all


def test_gateway_storm_ends_succeeded_with_one_charge_per_call(
    receiver: str, stub: StubServer, redis_aof: RedisServer, db: Db, tmp_path: Path
) -> None:
    """Through 30 % failing gateway calls every event succeeds, each logical call charged exactly once."""
    n = scaled(200)
    events = [transcription(i, "gateway-storm") for i in range(n)]
    ids = [e["id"] for e in events]
    # The client gives up on a call after 1 s; an injected timeout holds the answer back for 3 s.
    stub.set_faults(route="*", rates=RATES, seed=7, timeout_seconds=3)
    stub.set_faults(route="/v1/audio/speech", rates=RATES, seed=8, timeout_seconds=3, latency=1.2)
    env = stack_env(redis_aof.url, stub.base_url, tmp_path / "artifacts", RUNINFRA_CHAT_MODEL="stub-chat",
                    RUNINFRA_GATEWAY_TIMEOUT="1")
    with workers(env, tmp_path) as procs:
        started = time.monotonic()
        deliver_all(receiver, events)
        final = wait_final(db, ids, timeout=240, what="every event to finish through the storm", procs=procs)
        total_s = time.monotonic() - started

    processed = sum(r["state"] == "succeeded" for r in final.values())
    logical = 2 * n
    c = settled_charges(stub, expected=logical)
    calls = stub.calls()
    faults = Counter(str(call["fault"]) for call in calls if call["fault"] is not None)
    attempts = Counter(int(r["attempts"]) for r in final.values())
    replayed = sum(bool(call["replayed"]) for call in calls)
    conflicts = sum(call["status"] == 409 for call in calls)
    report("gateway_storm", events_sent=n, acknowledged=n, processed=processed, lost=n - processed,
           logical_calls=logical, gateway_requests=len(calls), injected_faults=sum(faults.values()),
           fault_share=round(sum(faults.values()) / len(calls), 3), faults=dict(faults),
           charged_then_replayed=replayed, in_flight_conflicts=conflicts,
           job_attempts=dict(sorted(attempts.items())), charges=c.total, double_charged=c.double_charged,
           charges_by_route=c.by_route, total_seconds=round(total_s, 1))

    assert processed == n, Counter((r["state"], r["reason"]) for r in final.values())
    assert c.total == logical and c.keys == logical and c.double_charged == 0, charges(stub)
    assert c.by_route == {"/v1/chat/completions": n, "/v1/audio/speech": n}
    assert set(faults) == {"500", "502", "503", "429", "timeout"}
    assert 0.15 < sum(faults.values()) / len(calls) < 0.45
    assert replayed > 0, "no call was charged after the client had given up"
