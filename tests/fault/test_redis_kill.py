"""Redis SIGKILLed during a steady load and restarted from its AOF (appendfsync always).

Promise: every delivery that got a 2xx is processed, none runs twice (gateway charges =
logical calls); while Redis is down deliveries get 503 and /readyz is 503 (RunInfra retries those); the
receiver and the worker ride the outage out as the same processes, nobody restarts them.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from runinfra_webhooks.service.storage import keys
from tests.fault.harness import (
    FINAL,
    SCALE,
    SteadySender,
    charges,
    now_ms,
    records,
    report,
    scaled,
    settled_charges,
    transcription,
    wait_final,
    workers,
)
from tests.processes import wait_until
from tests.redis_server import Db, RedisServer
from tests.stubserver import StubServer

pytestmark = pytest.mark.fault


def status(url: str) -> int:
    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.HTTPError:
        return 0


def test_redis_sigkill_under_load_loses_nothing(receiver: str, env: dict[str, str], stub: StubServer,
                                                 redis_aof: RedisServer, db: Db,
                                                 tmp_path: Path) -> None:
    """Redis SIGKILLed twice under load: 503 while it is down, then every acknowledged event runs once."""
    n = scaled(400)
    events = [transcription(i, "redis-kill") for i in range(n)]
    ids = [e["id"] for e in events]
    outages: list[dict[str, Any]] = []
    # Each speech call takes 0.3 s, so a dozen reactions are mid-flight whenever Redis dies.
    stub.set_faults(route="/v1/audio/speech", latency=0.3)

    with workers(env, tmp_path) as procs:
        [worker] = procs
        sender = SteadySender(receiver, events, threads=4, rate=10).start()
        for when in (0.25, 0.6):  # two outages, each while the load runs
            def acknowledged(share: float = when) -> bool:
                return sender.count() >= n * share

            wait_until(acknowledged, timeout=120 * max(1, SCALE), what=f"{when:.0%} acknowledged")
            unavailable_before = sender.unavailable()
            pending = {i for i, r in records(db, sender.acked_ids()).items() if r["state"] not in FINAL}
            redis_aof.kill()
            down_at = time.monotonic()
            time.sleep(0.3)  # answers to what Redis committed just before the kill may still be on the way
            acked_before = sender.count()
            readyz = status(receiver + "/readyz")
            healthz = status(receiver + "/healthz")
            def refused(before: int = unavailable_before) -> bool:
                return sender.unavailable() >= before + 5

            def down_long_enough(since: float = down_at) -> bool:
                return time.monotonic() - since >= 2

            wait_until(refused, timeout=60, what="deliveries answered 503 while Redis is down")
            wait_until(down_long_enough, timeout=10, what="2 s of outage")
            acked_during = sender.count() - acked_before
            redis_aof.start()  # same port, same directory: it loads the AOF
            outages.append({"down_s": time.monotonic() - down_at, "up_ms": now_ms(), "pending": pending})
            assert readyz == 503 and healthz == 200, (readyz, healthz)
            assert acked_during == 0, "a delivery was acknowledged while Redis was down"
            wait_until(lambda: status(receiver + "/readyz") == 200, timeout=30, what="/readyz back to 200")
        sender.join()
        acked = [i for i in ids if i in sender.acked]
        final = wait_final(db, acked, timeout=180, what="every acknowledged event to finish", procs=procs)
        assert worker.p.poll() is None, f"the worker exited during the outage:\n{worker.output()[-3000:]}"

    processed = sum(r["state"] == "succeeded" for r in final.values())
    c = settled_charges(stub, expected=len(acked))
    queued_answers = Counter(sender.acked.values())
    # Recovery of an outage: from Redis being back until every event acknowledged but unfinished when it
    # was killed has succeeded.
    recoveries = [max(int(final[i]["updated_ms"]) for i in o["pending"]) - o["up_ms"] for o in outages if o["pending"]]
    report("redis_sigkill", events_sent=n, acknowledged=len(acked), answered_503=sender.answers["503"],
           other_errors=sum(v for k, v in sender.answers.items() if k not in {"queued", "duplicate", "503"}),
           acked_as=dict(queued_answers), processed=processed, lost=len(acked) - processed, charges=c.total,
           double_charged=c.double_charged, outages=len(outages), worker_restarts=0, receiver_restarts=0,
           outage_seconds=[round(o["down_s"], 1) for o in outages],
           unfinished_at_kill=[len(o["pending"]) for o in outages],
           recovery_seconds=[round(r / 1000, 1) for r in recoveries])

    assert len(acked) == n
    assert processed == len(acked), Counter(r["state"] for r in final.values())
    assert c.total == len(acked) and c.keys == len(acked) and c.double_charged == 0, charges(stub)
    assert db.zcard(keys.INFLIGHT) == 0
