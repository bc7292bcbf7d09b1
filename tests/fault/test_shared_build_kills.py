"""The worker running a helper of a shared build SIGKILLed mid-build.

Promise: the batches the dead helper held come back when their lease ends (RUNINFRA_JOB_TIMEOUT) and are
done by the event's own job; every batch is charged once at the gateway, and the active revision flips once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from runinfra_webhooks.service.storage import keys
from tests.builders import example_event
from tests.fault.harness import deliver_all, report, settled_charges, wait_final
from tests.processes import Proc, cli, stack_env, wait_until
from tests.redis_server import Db, RedisServer
from tests.stubserver import start_gateway_stub

pytestmark = pytest.mark.fault

MODEL = "bge-m3"
REVISION = "rev_0001"  # the example deployment.ready's


def test_a_killed_helper_workers_batches_are_taken_over_each_charged_once_and_one_flip(
    receiver: str, redis_aof: RedisServer, db: Db, tmp_path: Path
) -> None:
    """SIGKILL the worker running the helper after it embedded a few batches: the event's job takes its leased
    batches over when their lease ends, every batch is charged once, and the revision flips once."""
    documents, batch = 1_200, 8
    batches = documents // batch
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": f"text {i}"}) + "\n" for i in range(documents)))
    event = example_event("deployment.ready")
    with start_gateway_stub(latency=0.03) as stub:
        env = stack_env(redis_aof.url, stub.base_url, tmp_path / "artifacts", RUNINFRA_EMBED_BATCH_SIZE=str(batch),
                        RUNINFRA_EMBED_CONCURRENCY="2", RUNINFRA_BUILD_PARTS="2", RUNINFRA_JOB_TIMEOUT="3")
        loaded = cli(env, "corpus", "load", str(corpus), "--collection", "kb", "--model", MODEL)
        assert loaded.returncode == 0, loaded.stderr
        workers = [Proc(["worker"], env, tmp_path / f"worker-{i}.log") for i in range(2)]
        try:
            wait_until(lambda: all('"worker.started"' in w.output() for w in workers), timeout=30,
                       what="both workers to start")
            started = time.monotonic()
            deliver_all(receiver, [event])

            def helper_calling() -> bool:  # the worker without the event's job has made 10 gateway calls
                return any('"embeddings.build"' not in w.output() and w.output().count('"gateway.call"') >= 10
                           for w in workers)

            wait_until(helper_calling, timeout=30, what="the helper to embed batches", interval=0.02)
            helper = next(w for w in workers if '"embeddings.build"' not in w.output())
            helper.kill()
            done_at_kill = int(db.bitcount(keys.corpus_progress("kb", REVISION)))
            final = wait_final(db, [event["id"]], timeout=90, what="the build to finish after the kill",
                               procs=workers)
            total_s = time.monotonic() - started
        finally:
            for w in workers:
                w.terminate()
        c = settled_charges(stub, expected=batches)
    logs = "".join(w.output() for w in workers)
    flips = logs.count('"event":"embeddings.done"')
    report("shared_build_helper_sigkill", documents=documents, batches=batches, done_at_kill=done_at_kill,
           charges=c.total, double_charged=c.double_charged, flips=flips, seconds=round(total_s, 1))
    assert done_at_kill < batches, "the build was over before the kill"
    assert final[event["id"]]["state"] == "succeeded"
    assert c.total == batches and c.double_charged == 0, c
    assert flips == 1
    assert db.hget(keys.corpus_meta("kb"), "revision") == REVISION.encode()
