"""Gateway limits across workers: three worker processes share one rate and one concurrency limit.

Promise (flow control): with ``/audio/speech`` limited to 10 calls a second and 4 at once, the gateway never
sees more than 11 calls in any one-second window nor more than 4 in flight, however many workers and job slots
there are (3 x 50 here), measured at the gateway emulator from the arrival of each call. Calls beyond the
limits wait, or are deferred without spending an attempt, so every event succeeds with one charge and a
single counted attempt.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.fault.harness import (
    deliver_all,
    most_in_window,
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

RATE, CONCURRENCY, LATENCY = 10, 4, 0.35  # 4 in flight for 0.35 s each would allow ~11/s: both limits matter


def test_rate_and_concurrency_limits_hold_at_the_gateway_across_three_workers(
    receiver: str, stub: StubServer, redis_aof: RedisServer, db: Db, tmp_path: Path
) -> None:
    n = scaled(300)
    events = [transcription(i, "limits") for i in range(n)]
    ids = [e["id"] for e in events]
    stub.set_faults(route="/v1/audio/speech", latency=LATENCY)
    env = stack_env(redis_aof.url, stub.base_url, tmp_path / "artifacts",
                    RUNINFRA_GATEWAY_RATE_LIMIT=f"/audio/speech={RATE}/s",
                    RUNINFRA_GATEWAY_CONCURRENCY=f"/audio/speech={CONCURRENCY}")
    deliver_all(receiver, events)
    with workers(env, tmp_path, n=3) as procs:
        started = time.monotonic()
        final = wait_final(db, ids, timeout=120 + n / RATE, what="every event through the limits", procs=procs)
        total_s = time.monotonic() - started
        deferred = sum(p.output().count('"event.waiting"') for p in procs)

    calls = [c for c in stub.calls() if c["route"] == "/v1/audio/speech"]
    arrivals = [c["arrived"] for c in calls]
    per_second = most_in_window(arrivals, 1.0)
    in_flight = max(c["in_flight"] for c in calls)
    span = max(arrivals) - min(arrivals)
    c = settled_charges(stub, expected=n)
    attempts = Counter(int(r["attempts"]) for r in final.values())
    processed = sum(r["state"] == "succeeded" for r in final.values())
    report("gateway_limits", workers=3, slots_per_worker=50, events=n, rate_limit=f"{RATE}/s",
           concurrency_limit=CONCURRENCY, gateway_latency_s=LATENCY, gateway_calls=len(calls),
           most_calls_in_any_second=per_second, most_in_flight=in_flight,
           mean_calls_per_second=round((len(calls) - 1) / span, 2), processed=processed, charges=c.total,
           double_charged=c.double_charged, job_attempts=dict(sorted(attempts.items())),
           job_runs_deferred_without_an_attempt=deferred,
           total_seconds=round(total_s, 1))

    assert processed == n, Counter((r["state"], r["last_error"]) for r in final.values())
    assert per_second <= RATE + 1
    assert in_flight <= CONCURRENCY
    assert c.total == n and c.double_charged == 0
    assert attempts == {1: n}, "waiting on a limit counted as an attempt"
    assert len(calls) == n
