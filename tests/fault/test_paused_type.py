"""A paused event type, with real processes: `pause transcription.completed` while deliveries keep coming.

Promise (pause): events of a paused type are still received, acknowledged and audited, and wait as ``queued``
(``events show`` says ``"paused": true``) with nothing attempted and no gateway call, while other types are
processed as usual; after `resume` every one of them is processed, with one charge each.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from runinfra_webhooks.service.storage import keys
from tests.fault.harness import (
    deliver_all,
    deployment,
    records,
    report,
    scaled,
    settled_charges,
    transcription,
    wait_final,
)
from tests.processes import Proc, cli, stack_env
from tests.redis_server import Db, RedisServer
from tests.stubserver import StubServer

pytestmark = pytest.mark.fault

HELD_FOR = 5.0  # seconds the paused events wait after the other type has been processed


def test_paused_type_is_acknowledged_and_audited_but_not_attempted_until_resumed(
    receiver: str, stub: StubServer, redis_aof: RedisServer, db: Db, tmp_path: Path
) -> None:
    n = scaled(100)
    paused = [transcription(i, "paused") for i in range(n)]
    others = [deployment(i) for i in range(n)]
    paused_ids, other_ids = [e["id"] for e in paused], [e["id"] for e in others]
    env = stack_env(redis_aof.url, stub.base_url, tmp_path / "artifacts")
    assert cli(env, "pause", "transcription.completed").returncode == 0
    worker = Proc(["worker"], env, tmp_path / "worker.log")
    try:
        answers = deliver_all(receiver, [e for pair in zip(paused, others, strict=True) for e in pair])
        wait_final(db, other_ids, timeout=60, what="the other type", procs=[worker])
        time.sleep(HELD_FOR)
        held = records(db, paused_ids)
        shown = json.loads(cli(env, "events", "show", paused_ids[0]).stdout)
        calls_while_paused = len(stub.calls())
        audited = db.xlen(keys.AUDIT_STREAM)
        resumed = json.loads(cli(env, "resume", "transcription.completed").stdout)
        started = time.monotonic()
        final = wait_final(db, paused_ids, timeout=60, what="the paused type after resume", procs=[worker])
        drain_s = time.monotonic() - started
    finally:
        worker.terminate()

    c = settled_charges(stub, expected=n)
    held_states = Counter((r["state"], r["attempts"]) for r in held.values())
    processed = sum(r["state"] == "succeeded" for r in final.values())
    report("paused_type", events_paused_type=n, events_other_type=n,
           acknowledged=sum(answers[i] == "queued" for i in paused_ids), audit_entries=audited,
           held_states={f"{s}/attempts={a}": k for (s, a), k in held_states.items()},
           gateway_calls_while_paused=calls_while_paused, requeued_on_resume=resumed["requeued"],
           processed_after_resume=processed, drain_after_resume_s=round(drain_s, 2), charges=c.total,
           double_charged=c.double_charged)

    assert all(answers[i] == "queued" for i in paused_ids)
    assert audited == 2 * n
    assert held_states == {("queued", "0"): n}
    assert shown["paused"] is True and shown["state"] == "queued" and shown["attempts"] == 0
    assert calls_while_paused == 0
    assert resumed["requeued"] == n
    assert processed == n
    assert c.total == n and c.double_charged == 0
