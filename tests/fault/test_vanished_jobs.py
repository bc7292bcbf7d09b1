"""A queued job that vanishes or expires from arq's keys is recovered by the sweep.

The receiver writes the arq job (``arq:job:<event id>@0``) and its queue entry (``arq:queue``) with the
event. Before any worker runs, some jobs are deleted, some queue entries removed, some both, and some jobs
expire (PEXPIRE 1 ms). The worker's sweep (every RUNINFRA_SWEEP_INTERVAL = 1 s, for events in flight longer
than RUNINFRA_STUCK_AFTER = 2 s) re-queues them and they end succeeded, charged once. An event whose job
vanished longer ago than RUNINFRA_LOST_DEADLINE is dead-lettered as ``lost`` instead (and replay brings it
back): never forgotten.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from runinfra_webhooks.service.storage import keys
from tests.fault.harness import deliver_all, now_ms, records, report, settled_charges, transcription, wait_final
from tests.processes import Proc, cli, wait_until
from tests.redis_server import Db, RedisServer
from tests.stubserver import StubServer

pytestmark = pytest.mark.fault

LOST_DEADLINE_S = 3


def job_key(event_id: str) -> str:
    return keys.ARQ_JOB + keys.job_id(event_id, 0)


def test_vanished_and_expired_jobs_are_recovered_by_the_sweep(
    receiver: str, env: dict[str, str], stub: StubServer, redis_aof: RedisServer, db: Db,
    tmp_path: Path
) -> None:
    """Deleted, unqueued and expired arq jobs are re-queued by the sweep and end succeeded, charged once."""
    per_kind = 5
    kinds = ("job_deleted", "queue_entry_deleted", "both_deleted", "job_expired", "untouched")
    events = {kind: [transcription(i, kind) for i in range(per_kind)] for kind in kinds}
    everything = [e for batch in events.values() for e in batch]
    assert set(deliver_all(receiver, everything).values()) == {"queued"}
    ids = {kind: [e["id"] for e in batch] for kind, batch in events.items()}

    for i in ids["job_deleted"]:
        assert db.delete(job_key(i)) == 1
    for i in ids["queue_entry_deleted"]:
        assert db.zrem(keys.ARQ_QUEUE, keys.job_id(i, 0)) == 1
    for i in ids["both_deleted"]:
        assert db.delete(job_key(i)) == 1 and db.zrem(keys.ARQ_QUEUE, keys.job_id(i, 0)) == 1
    for i in ids["job_expired"]:
        assert db.pexpire(job_key(i), 1)
    wait_until(lambda: not any(db.exists(job_key(i)) for i in ids["job_expired"]), timeout=10, what="expiry")

    started_ms = now_ms()
    worker = Proc(["worker"], env, tmp_path / "worker.log")
    try:
        final = wait_final(db, [i for batch in ids.values() for i in batch], timeout=90,
                           what="the sweep to recover every vanished job", procs=[worker])
    finally:
        worker.terminate()
    recovered_s = {kind: round(max(int(final[i]["updated_ms"]) for i in batch) / 1000 - started_ms / 1000, 1)
                   for kind, batch in ids.items()}
    requeued = worker.output().count('"event":"sweep.done"')

    # An event whose job vanished before the lost deadline ran out: dead-lettered as lost, not forgotten.
    lost = transcription(0, "lost")
    deliver_all(receiver, [lost])
    db.delete(job_key(lost["id"]))
    db.zrem(keys.ARQ_QUEUE, keys.job_id(lost["id"], 0))
    time.sleep(LOST_DEADLINE_S + 0.5)
    strict = dict(env, RUNINFRA_LOST_DEADLINE=str(LOST_DEADLINE_S))
    worker = Proc(["worker"], strict, tmp_path / "worker-strict.log")
    try:
        [parked] = wait_final(db, [lost["id"]], timeout=60, what="the lost event to be dead-lettered",
                              procs=[worker]).values()
    finally:
        worker.terminate()
    in_dead_letters = db.zscore(keys.DEAD_LETTERS, lost["id"]) is not None
    charges_before_replay = settled_charges(stub, expected=len(everything)).total

    # ...and an operator's replay brings it back, under a new key generation.
    replay = cli(env, "replay", lost["id"])
    worker = Proc(["worker"], env, tmp_path / "worker-after-replay.log")
    try:
        wait_until(lambda: records(db, [lost["id"]])[lost["id"]]["state"] == "succeeded", timeout=60,
                   what="the replayed event to succeed")
    finally:
        worker.terminate()

    processed = sum(r["state"] == "succeeded" for r in final.values())
    c = settled_charges(stub, expected=len(everything) + 1)
    report("vanished_jobs", events_sent=len(everything) + 1, acknowledged=len(everything) + 1,
           vanished_or_expired=len(everything) - per_kind, processed=processed, lost=len(everything) - processed,
           sweep_runs_that_acted=requeued, recovered_seconds_after_worker_start=recovered_s,
           past_deadline_state=parked["state"], past_deadline_reason=parked["reason"],
           charges=c.total, double_charged=c.double_charged)

    assert processed == len(everything), {i: r["state"] for i, r in final.items() if r["state"] != "succeeded"}
    assert all(int(r["generation"]) == 0 for r in final.values())
    assert (parked["state"], parked["reason"]) == ("dead_lettered", "lost") and in_dead_letters
    assert charges_before_replay == len(everything)  # the lost event never reached the gateway
    assert replay.returncode == 0 and json.loads(replay.stdout)["generation"] == 1, replay
    assert c.total == len(everything) + 1 and c.double_charged == 0, c
    assert db.zcard(keys.INFLIGHT) == 0
