"""A dead-letter storm: 500 events are refused by the gateway (400) and dead-lettered within seconds, while the
alert endpoint is down for the first part of it.

Promise (alerts): the operator gets a bounded number of ``alert.event_dead_lettered`` (at most one per
RUNINFRA_ALERT_COOLDOWN for the event type, plus the one that closes the last window), each signed and
verifiable like any RunInfra delivery, and the alerts plus their ``data.suppressed`` account for every one of
the 500. Alerts that failed while the endpoint was down are retried under the same id and all arrive once it is
back.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from runinfra_webhooks.service.storage import keys
from tests.alert_sink import AlertSink, alert_sink
from tests.fault.harness import deliver_all, report, scaled, transcription, wait_final, workers
from tests.processes import stack_env, wait_until
from tests.redis_server import Db, RedisServer
from tests.stubserver import StubServer

pytestmark = pytest.mark.fault

COOLDOWN, DOWN_FOR = 2.0, 8.0


@pytest.fixture
def sink() -> Iterator[AlertSink]:
    with alert_sink() as s:
        yield s


def accounted(sink: AlertSink) -> int:
    dead = {a["id"]: a for a in sink.accepted() if a["type"] == "alert.event_dead_lettered"}
    return sum(1 + a["data"]["suppressed"] for a in dead.values())


def test_dead_letter_storm_gives_bounded_signed_alerts_that_account_for_every_event(
    receiver: str, stub: StubServer, redis_aof: RedisServer, db: Db, tmp_path: Path, sink: AlertSink
) -> None:
    n = scaled(500)
    events = [transcription(i, "storm") for i in range(n)]
    ids = [e["id"] for e in events]
    stub.set_faults(route="/v1/audio/speech", rates={"400": 1.0})
    env = stack_env(redis_aof.url, stub.base_url, tmp_path / "artifacts", RUNINFRA_ALERT_URL=sink.url,
                    RUNINFRA_ALERT_SECRET=sink.secret, RUNINFRA_ALERT_COOLDOWN=str(COOLDOWN),
                    RUNINFRA_ALERT_RETRY_CAP="1")
    sink.down = True
    with workers(env, tmp_path, n=3) as procs:
        storm_start = time.time()
        deliver_all(receiver, events)
        final = wait_final(db, ids, timeout=120, what="every event dead-lettered", procs=procs)
        parked_at = [float(r["updated_ms"]) / 1000 for r in final.values()]
        storm_s = max(parked_at) - min(parked_at)
        wait_until(lambda: time.time() > storm_start + DOWN_FOR, timeout=DOWN_FOR, what="the endpoint's downtime")
        refused = len(sink.posts)
        sink.down = False
        back = time.time()
        wait_until(lambda: accounted(sink) >= n, timeout=30, what="alerts to account for every dead letter")
        caught_up_s = time.time() - back
        time.sleep(2 * COOLDOWN)  # nothing more should come
        outbox = db.zcard(keys.ALERT_OUTBOX)

    accepted = [a for a in sink.accepted() if a["type"] == "alert.event_dead_lettered"]
    unique = {a["id"]: a for a in accepted}
    # The first alert, one per cooldown window the storm (as the monitor reads it) touches, and the closing one.
    bound = math.ceil(storm_s / COOLDOWN) + 2
    verified = sum(sink.verified(body, headers) for body, headers in sink.posts)
    report("alert_storm", dead_letters=n, storm_seconds=round(storm_s, 1), alert_cooldown_s=COOLDOWN,
           endpoint_down_s=DOWN_FOR, posts_refused_while_down=refused, alerts_received=len(unique),
           duplicate_deliveries=len(accepted) - len(unique), bound=round(bound, 1),
           suppressed=[a["data"]["suppressed"] for a in unique.values()], accounted_for=accounted(sink),
           signatures_verified=f"{verified}/{len(sink.posts)}", caught_up_after_endpoint_back_s=round(caught_up_s, 1),
           outbox_left=outbox)

    assert all(r["state"] == "dead_lettered" for r in final.values()), Counter(r["state"] for r in final.values())
    assert refused > 0, "the endpoint was never tried while down"
    assert len(unique) <= bound
    made = sorted(a["created"] for a in unique.values())  # whole seconds: one alert per cooldown, at most
    assert all(later - earlier >= COOLDOWN - 1 for earlier, later in itertools.pairwise(made)), made
    assert accounted(sink) == n
    assert verified == len(sink.posts)
    assert {json.dumps(a["data"], sort_keys=True) for a in unique.values()} == {
        json.dumps(a["data"], sort_keys=True) for a in accepted}
    assert outbox == 0
