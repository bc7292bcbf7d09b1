"""A 429 pauses the route for every worker: the gateway answers 429 ``Retry-After: 3`` to everything for a while.

Promise (flow control): after a 429, no worker calls that route until Retry-After has passed. Measured at the
gateway emulator: after the first 429 is answered, only calls already on their way (sent before any worker had
seen it) arrive, and then nothing for 3 s; the same after every later 429 burst. Once the gateway recovers every
event succeeds with one charge and none is dead-lettered.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest

from tests.fault.harness import deliver_all, report, scaled, settled_charges, transcription, wait_final, workers
from tests.processes import stack_env, wait_until
from tests.redis_server import Db, RedisServer
from tests.stubserver import StubServer

pytestmark = pytest.mark.fault

RETRY_AFTER = 3
WINDOW = 10.0  # seconds of 429s
IN_TRANSIT = 0.5  # a call sent before its worker could know about the 429 arrives within this


def bursts(times: list[float], gap: float) -> list[list[float]]:
    """Arrival times grouped into bursts separated by more than ``gap`` seconds of silence."""
    out: list[list[float]] = []
    for t in sorted(times):
        if out and t - out[-1][-1] <= gap:
            out[-1].append(t)
        else:
            out.append([t])
    return out


def test_429_stops_every_worker_calling_the_route_until_retry_after(
    receiver: str, stub: StubServer, redis_aof: RedisServer, db: Db, tmp_path: Path
) -> None:
    n = scaled(60)
    events = [transcription(i, "throttled") for i in range(n)]
    ids = [e["id"] for e in events]
    env = stack_env(redis_aof.url, stub.base_url, tmp_path / "artifacts")
    with workers(env, tmp_path, n=3) as procs:
        wait_until(lambda: all("worker.started" in p.output() for p in procs), timeout=60, what="workers up")
        stub.set_faults(route="/v1/audio/speech", rates={"429": 1.0}, retry_after=RETRY_AFTER, duration=WINDOW)
        deliver_all(receiver, events)
        final = wait_final(db, ids, timeout=90, what="every event after the 429 window", procs=procs)

    calls = sorted((c for c in stub.calls() if c["route"] == "/v1/audio/speech"), key=lambda c: c["arrived"])
    throttled = [c for c in calls if c["status"] == 429]
    first = min(c["answered"] for c in throttled)
    in_transit = [c for c in calls if first < c["arrived"] <= first + IN_TRANSIT]
    silent_breach = [c for c in calls if first + IN_TRANSIT < c["arrived"] < first + RETRY_AFTER]
    after = [c for c in calls if c["arrived"] >= first + RETRY_AFTER]
    resumed_after = after[0]["arrived"] - first if after else None
    groups = bursts([c["arrived"] for c in throttled], gap=1.0)
    gaps = [b[0] - a[-1] for a, b in itertools.pairwise(groups)]
    c = settled_charges(stub, expected=n)
    processed = sum(r["state"] == "succeeded" for r in final.values())
    report("gateway_429", workers=3, events=n, retry_after_s=RETRY_AFTER, window_s=WINDOW,
           gateway_calls=len(calls), answered_429=len(throttled), bursts_of_429=len(groups),
           calls_in_transit_after_first_429=len(in_transit),
           calls_between_0_5_and_3_s_after_first_429=len(silent_breach),
           first_call_after_the_pause_s=round(resumed_after, 3) if resumed_after else None,
           shortest_silence_between_429_bursts_s=round(min(gaps), 3) if gaps else None,
           processed=processed, charges=c.total, double_charged=c.double_charged,
           job_attempts=dict(sorted(Counter(int(r["attempts"]) for r in final.values()).items())))

    assert processed == n, Counter((r["state"], r["reason"]) for r in final.values())
    assert silent_breach == []
    assert resumed_after is not None and resumed_after >= RETRY_AFTER
    assert gaps and min(gaps) >= RETRY_AFTER - IN_TRANSIT
    assert c.total == n and c.double_charged == 0
