"""The primary SIGKILLed under load with REDIS_URL naming a Sentinel; Sentinel promotes the replica.

Promise: while no master is reachable a delivery is answered 503 (never another 5xx, never a hang) and
nothing is acknowledged; after the failover the same receiver and worker processes (nobody restarts them)
acknowledge and process every delivery. Replication is asynchronous, so an event acknowledged by the old
primary just before it died may never have reached the replica: the test measures that loss and prints it
rather than asserting it away.

Topology: primary + one replica (both AOF, appendfsync always) + one Sentinel (quorum 1,
down-after-milliseconds 1000, failover-timeout 5000). Events are deployment.* (no gateway call).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from runinfra_webhooks.service.storage import keys
from tests.builders import WEBHOOK_PATH, signed_delivery
from tests.fault.harness import FINAL, deployment, records, report, wait_final, workers
from tests.processes import cli, stack_env, started_receiver, wait_until
from tests.redis_server import RedisServer, as_db
from tests.sentinel import ReplicaServer, SentinelServer
from tests.stubserver import StubServer

pytestmark = pytest.mark.fault

ANSWER_TIMEOUT_S = 15.0  # a hang would show up as a transport error here
HANG_LIMIT_S = 8.0  # slowest acceptable answer: the receiver's Redis timeouts are 2 s connect, 5 s socket


@dataclass(frozen=True)
class Answer:
    event_id: str
    started: float
    ended: float
    label: str  # "queued" / "duplicate" for a 2xx, else the status code, or error_<name>

    @property
    def acked(self) -> bool:
        return self.label in ("queued", "duplicate")


class Recorder:
    """``threads`` RunInfra-like senders: each delivers a new deployment event, re-sent (re-signed) on
    anything but 2xx until acknowledged, then the next one. Every single answer is kept with its times."""

    def __init__(self, url: str, threads: int = 4, pause: float = 0.05) -> None:
        self.url = url
        self.pause = pause
        self.answers: list[Answer] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._counter = itertools.count()
        self._pool = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> Recorder:
        for t in self._pool:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._pool:
            t.join(ANSWER_TIMEOUT_S + 5)
        if self.errors:
            raise self.errors[0]

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def _run(self) -> None:
        try:
            with httpx.Client(timeout=ANSWER_TIMEOUT_S) as client:
                while not self._stop.is_set():
                    with self._lock:
                        i = next(self._counter)
                    event = deployment(i)
                    while not self._stop.is_set():
                        body, headers = signed_delivery(event)
                        started = time.monotonic()
                        try:
                            r = client.post(self.url + WEBHOOK_PATH, content=body, headers=headers)
                            label = r.json()["status"] if r.is_success else str(r.status_code)
                        except httpx.HTTPError as exc:
                            label = f"error_{type(exc).__name__}"
                        answer = Answer(event["id"], started, time.monotonic(), label)
                        with self._lock:
                            self.answers.append(answer)
                        if answer.acked:
                            break
                        time.sleep(0.1)
                    time.sleep(self.pause)
        except BaseException as exc:  # surfaced by stop()
            self.errors.append(exc)


def acked_count(rec: Recorder, since: float = 0.0) -> int:
    return sum(a.acked and a.started >= since for a in rec.snapshot())


def test_a_sentinel_failover_under_load_answers_503_then_recovers_in_place(stub: StubServer, tmp_path: Path) -> None:
    """Primary killed under load: 503 while no master is known, then the same processes take everything."""
    t0 = time.monotonic()
    dirs = {name: tmp_path / name for name in ("primary", "replica", "sentinel")}
    for d in dirs.values():
        d.mkdir()
    primary = RedisServer(dirs["primary"], appendonly=True)
    replica = ReplicaServer(dirs["replica"], primary.port)
    sentinel = SentinelServer(dirs["sentinel"], primary.port)
    with primary, replica, sentinel:
        replica.wait_synced()
        # Sentinel learns of replicas from the primary's INFO; without one known it has nothing to promote.
        wait_until(lambda: replica.port in sentinel.replica_ports(), timeout=15, what="Sentinel to see the replica")
        env = stack_env(sentinel.url(), stub.base_url, tmp_path / "artifacts")

        with workers(env, tmp_path) as procs, started_receiver(env, tmp_path / "receiver.log") as (url, receiver):
            [worker] = procs
            rec = Recorder(url).start()
            try:
                wait_until(lambda: acked_count(rec) >= 60, timeout=30, what="60 deliveries acknowledged")
                primary.kill()
                killed_at = time.monotonic()
                try:
                    wait_until(lambda: sentinel.master_port() == replica.port, timeout=30,
                               what="Sentinel to promote the replica", interval=0.02)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n{sentinel.log_tail()}") from None
                switched_at = time.monotonic()
                wait_until(lambda: acked_count(rec, since=switched_at) >= 1, timeout=20,
                           what="a delivery acknowledged after the failover")
                wait_until(lambda: acked_count(rec, since=switched_at) >= 60, timeout=30,
                           what="60 deliveries acknowledged after the failover")
            finally:
                rec.stop()
            answers = rec.snapshot()

            db = as_db(replica.client())  # the new primary
            acked = {a.event_id: a for a in answers if a.acked}
            before_kill = [i for i, a in acked.items() if a.started < killed_at]
            during = [i for i, a in acked.items() if killed_at <= a.started < switched_at]
            after = [i for i, a in acked.items() if a.started >= switched_at]
            present = {i for i, r in records(db, acked).items() if r["state"]}
            lost_before_kill = [i for i in before_kill if i not in present]
            final = wait_final(db, sorted(present), timeout=60, what="every surviving acknowledged event",
                               procs=procs)
            assert worker.p.poll() is None, f"the worker exited:\n{worker.output()[-3000:]}"
            assert receiver.p.poll() is None, f"the receiver exited:\n{receiver.output()[-3000:]}"

            inflight_left = db.zcard(keys.INFLIGHT)
            # The command line goes through Sentinel too.
            probe = after[0]
            show = cli(env, "events", "show", probe)

    labels = Counter(a.label for a in answers)
    first_ack_after_kill = min((a.ended for a in answers if a.acked and a.started >= killed_at), default=None)
    # No master reachable: from the kill until Sentinel names a healthy one. Requests wholly inside that
    # window (less a 0.1 s margin for how often this test polls Sentinel) cannot have been acknowledged.
    acked_without_master = [a for a in answers if a.acked and a.started > killed_at and a.ended < switched_at - 0.1]
    slowest = max(a.ended - a.started for a in answers)
    processed_after = sum(final.get(i, {}).get("state") == "succeeded" for i in after)
    report("sentinel_failover", acked_before_kill=len(before_kill), lost_of_those=len(lost_before_kill),
           acked_during_failover=len(during), acked_after_failover=len(after),
           processed_after_failover=processed_after, answered_503=labels["503"],
           other_answers={k: v for k, v in labels.items() if k not in ("queued", "duplicate", "503")},
           failover_seconds=round(switched_at - killed_at, 2),
           first_ack_after_kill_seconds=round(first_ack_after_kill - killed_at, 2) if first_ack_after_kill else None,
           slowest_answer_seconds=round(slowest, 2), worker_restarts=0, receiver_restarts=0,
           total_seconds=round(time.monotonic() - t0, 1))

    assert set(labels) <= {"queued", "duplicate", "503"}, labels
    assert labels["503"] > 0, "no delivery was answered 503 while no master was reachable"
    assert slowest < HANG_LIMIT_S, f"an answer took {slowest:.1f} s"
    assert not acked_without_master, f"{len(acked_without_master)} acknowledged while no master was reachable"
    assert len(after) >= 60
    missing_after = [i for i in after + during if i not in present]
    assert not missing_after, f"{len(missing_after)} events acknowledged after the kill are not in the new primary"
    assert processed_after == len(after), Counter(final[i]["state"] for i in after)
    assert all(final[i]["state"] == "succeeded" for i in present), Counter(r["state"] for r in final.values())
    assert all(r["state"] in FINAL for r in final.values())
    assert inflight_left == 0
    assert show.returncode == 0 and '"succeeded"' in show.stdout, (show.returncode, show.stdout, show.stderr)
