"""A worker SIGKILLed at random batches of one large re-embedding build, several times, in both stores.

Promise: a build is resumable after a crash at any batch; every batch is charged
once at the gateway whatever dies in between (a retry resends the batch's key and gets the stored answer);
the active revision flips once, when every document has its vector. A supervisor starts a new worker
after each kill; arq re-runs the killed job once its in-progress key expires.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from runinfra_webhooks.service.storage import keys
from tests.builders import example_event
from tests.fault.harness import deliver_all, report, scaled, settled_charges, wait_final
from tests.processes import Proc, cli, stack_env, wait_until
from tests.redis_server import Db, RedisServer
from tests.stubserver import start_gateway_stub
from tests.vectorstores import store_url

pytestmark = pytest.mark.fault

MODEL = "bge-m3"
REVISION = "rev_0001"  # the example deployment.ready's
KILLS = 3
# (documents, batch size): Qdrant's embedded mode commits each point on its own (~25 ms), so it gets fewer.
SIZES = {"redis": (scaled(1_500), 12), "qdrant": (scaled(240), 8)}


def progress(db: Db) -> int:
    """How many batches are done (a bitmap: batches may finish out of order)."""
    return int(db.bitcount(keys.corpus_progress("kb", REVISION)))


def flipped(db: Db) -> bool:
    return db.hget(keys.corpus_meta("kb"), "revision") == REVISION.encode()


@pytest.mark.parametrize("kind", ["redis", "qdrant"])
def test_worker_sigkilled_at_random_batches_of_a_build_charges_each_batch_once_and_flips_once(
    receiver: str, redis_aof: RedisServer, db: Db, tmp_path: Path, kind: str
) -> None:
    documents, batch = SIZES[kind]
    batches = -(-documents // batch)
    seed = random.randrange(1_000_000)
    # In the first half, so that even with batches in flight at each kill the build is not over by the third.
    targets = sorted(random.Random(seed).sample(range(1, batches // 2), KILLS))
    texts = [f"document {i} of the kill corpus, on topic {i % 13}" for i in range(documents)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    kills: list[tuple[int, int]] = []  # (target batch, progress seen at the kill)
    # 30 ms per call keeps a batch in flight long enough to be killed mid-call; a 3 s job deadline makes
    # arq re-run a killed job after 3 + 15 s.
    with start_gateway_stub(latency=0.03) as stub:
        env = stack_env(redis_aof.url, stub.base_url, tmp_path / "artifacts", RUNINFRA_EMBED_BATCH_SIZE=str(batch),
                        RUNINFRA_VECTOR_STORE=store_url(kind, tmp_path), RUNINFRA_JOB_TIMEOUT="3")
        loaded = cli(env, "corpus", "load", str(corpus), "--collection", "kb", "--model", MODEL, timeout=120)
        assert loaded.returncode == 0, loaded.stderr
        event = example_event("deployment.ready")
        deliver_all(receiver, [event])
        worker = Proc(["worker"], env, tmp_path / "worker-0.log")
        dead: list[Proc] = []
        try:
            started = time.monotonic()
            for target in targets:
                # Past the target and past the last kill: every kill lands in a run that has done work.
                goal = max(target, kills[-1][1] + 1 if kills else 0)
                def reached(goal: int = goal) -> bool:
                    return progress(db) >= goal or flipped(db)

                wait_until(reached, timeout=120, what=f"batch {goal}", interval=0.01)
                if flipped(db):
                    break
                worker.kill()
                kills.append((target, progress(db)))
                dead.append(worker)
                worker = Proc(["worker"], env, tmp_path / f"worker-{len(kills)}.log")
            final = wait_final(db, [event["id"]], timeout=240, what="the build to finish after the kills",
                               procs=[worker])
            total_s = time.monotonic() - started
        finally:
            for p in [worker, *dead]:
                p.terminate()
        c = settled_charges(stub, expected=batches)
        replayed = sum(bool(call["replayed"]) for call in stub.calls() if call["route"] == "/v1/embeddings")
        found = cli(env, "corpus", "search", texts[batches // 2 * batch], "--collection", "kb", "-k", "1",
                    timeout=120)
    logs = "".join((tmp_path / f"worker-{i}.log").read_text(errors="replace") for i in range(len(kills) + 1))
    flips = logs.count('"event":"embeddings.done"')
    exported = cli(env, "corpus", "export", "--collection", "kb", timeout=120)
    rows = [json.loads(line) for line in exported.stdout.splitlines()]

    report(f"build_sigkill_{kind}", documents=documents, batches=batches, seed=seed, kills=len(kills),
           killed_at_batches=[p for _, p in kills], charges=c.total, double_charged=c.double_charged,
           gateway_replays=replayed, flips=flips, state=final[event["id"]]["state"], seconds=round(total_s, 1))
    assert len(kills) == KILLS, f"the build finished before every kill landed: {kills}"
    assert final[event["id"]]["state"] == "succeeded"
    assert c.total == batches and c.double_charged == 0, c
    assert flips == 1
    assert [r["id"] for r in rows] == [f"d{i}" for i in range(documents)]
    assert {r["revision"] for r in rows} == {REVISION}
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["id"] == f"d{batches // 2 * batch}"
