"""A gateway outage: 503 to everything for 60 s while 200 events wait.

Promise (flow control): after RUNINFRA_BREAKER_THRESHOLD consecutive failures the route's circuit opens; while
it is open nothing is sent but one probe per cooldown, the events wait as ``retrying`` with last_error
``circuit_open`` and no attempt counted, so none is dead-lettered however long the outage lasts; the first
probe after the outage closes the circuit and every event succeeds with one charge. The operator gets one
``alert.circuit_opened`` and one ``alert.circuit_closed``, signed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.alert_sink import AlertSink, alert_sink
from tests.fault.harness import (
    deliver_all,
    records,
    report,
    scaled,
    settled_charges,
    transcription,
    wait_final,
    workers,
)
from tests.processes import stack_env, wait_until
from tests.redis_server import Db, RedisServer
from tests.stubserver import StubServer

pytestmark = pytest.mark.fault

OUTAGE, COOLDOWN, THRESHOLD, CONCURRENCY = 60.0, 10, 5, 4


@pytest.fixture
def sink() -> Iterator[AlertSink]:
    with alert_sink() as s:
        yield s


def test_breaker_stops_calls_during_an_outage_and_nothing_is_dead_lettered(
    receiver: str, stub: StubServer, redis_aof: RedisServer, db: Db, tmp_path: Path, sink: AlertSink
) -> None:
    n = scaled(200)
    events = [transcription(i, "outage") for i in range(n)]
    ids = [e["id"] for e in events]
    env = stack_env(redis_aof.url, stub.base_url, tmp_path / "artifacts", RUNINFRA_BREAKER_COOLDOWN=str(COOLDOWN),
                    RUNINFRA_BREAKER_THRESHOLD=str(THRESHOLD),
                    RUNINFRA_GATEWAY_CONCURRENCY=f"/audio/speech={CONCURRENCY}",
                    RUNINFRA_ALERT_URL=sink.url, RUNINFRA_ALERT_SECRET=sink.secret)
    deliver_all(receiver, events)
    stub.set_faults(route="/v1/audio/speech", rates={"503": 1.0}, duration=OUTAGE)
    outage_start = time.time()
    with workers(env, tmp_path, n=3) as procs:
        wait_until(lambda: time.time() > outage_start + OUTAGE / 2, timeout=OUTAGE, what="mid-outage")
        middle = records(db, ids)
        wait_until(lambda: time.time() > outage_start + OUTAGE, timeout=OUTAGE, what="the end of the outage")
        final = wait_final(db, ids, timeout=60 + 3 * COOLDOWN, what="every event after the outage", procs=procs)
        recovered_s = time.time() - (outage_start + OUTAGE)
        wait_until(lambda: len(sink.accepted()) >= 2, timeout=10, what="both circuit alerts")

    calls = sorted((c for c in stub.calls() if c["route"] == "/v1/audio/speech"), key=lambda c: c["arrived"])
    during = [c for c in calls if c["arrived"] < outage_start + OUTAGE]
    failed = [c for c in during if c["status"] == 503]
    opened_at = sorted(c["answered"] for c in failed)[THRESHOLD - 1]
    after_open = [c for c in during if c["arrived"] > opened_at]
    mid_states = Counter((r["state"], r["last_error"], r["attempts"]) for r in middle.values())
    c = settled_charges(stub, expected=n)
    processed = sum(r["state"] == "succeeded" for r in final.values())
    dead = sum(r["state"] == "dead_lettered" for r in final.values())
    alerts = [(a["type"], a["data"]["route"]) for a in sink.accepted()]
    report("breaker_outage", workers=3, events=n, outage_s=OUTAGE, breaker_threshold=THRESHOLD,
           breaker_cooldown_s=COOLDOWN, concurrency_limit=CONCURRENCY, calls_during_outage=len(during),
           calls_before_open=len(during) - len(after_open), calls_after_open=len(after_open),
           mid_outage_states={f"{s}/{e or '-'}/attempts={a}": k for (s, e, a), k in mid_states.items()},
           dead_lettered=dead, processed=processed, recovered_s_after_outage=round(recovered_s, 1),
           charges=c.total, double_charged=c.double_charged,
           job_attempts=dict(sorted(Counter(int(r["attempts"]) for r in final.values()).items())), alerts=alerts)

    assert processed == n and dead == 0, Counter((r["state"], r["reason"]) for r in final.values())
    # after it opened: calls already on their way (at most the concurrency limit), then one probe per cooldown
    assert len(after_open) <= CONCURRENCY + OUTAGE / COOLDOWN + 1
    assert mid_states[("retrying", "circuit_open", "0")] >= n * 0.9, mid_states
    assert c.total == n and c.double_charged == 0
    assert Counter(int(r["attempts"]) for r in final.values()) == {1: n}
    assert alerts == [("alert.circuit_opened", "/audio/speech"), ("alert.circuit_closed", "/audio/speech")]
    assert all(sink.verified(body, headers) for body, headers in sink.posts)
