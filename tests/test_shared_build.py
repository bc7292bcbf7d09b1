"""One re-embedding build shared by several jobs: batches claimed under leases, helpers on other workers,
one flip, every batch charged once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from runinfra_webhooks.handlers import corpus, embeddings
from runinfra_webhooks.handlers.context import HandlerContext
from runinfra_webhooks.handlers.corpus import CorpusChanged, claim_batch, join_build, load_corpus, start_build
from runinfra_webhooks.service.gateway.client import GatewayClient, idempotency_key
from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.batch_claims import CLAIM_SCRIPT, BatchClaims
from tests.builders import example_event, signed_delivery
from tests.conftest import make_settings
from tests.processes import Proc, cli, stack_env, wait_until
from tests.redis_server import Db, as_async_db
from tests.stubserver import STUB_API_KEY, StubServer, start_gateway_stub

MODEL = "bge-m3"
REVISION = "rev_0001"  # the example deployment.ready's


def log_events(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_two_worker_processes_share_one_build_charging_each_batch_once_and_flipping_once(
    receiver_url: str, redis_url: str, db: Db, tmp_path: Path
) -> None:
    """With RUNINFRA_BUILD_PARTS=2 and two real workers, both embed batches of one build; each batch is charged
    once under its own key, and the revision flips once."""
    documents, batch = 480, 8
    batches = documents // batch
    corpus_file = tmp_path / "corpus.jsonl"
    corpus_file.write_text("".join(json.dumps({"id": f"d{i}", "text": f"text {i}"}) + "\n" for i in range(documents)))
    event = example_event("deployment.ready")
    with start_gateway_stub(latency=0.03) as stub:
        env = stack_env(redis_url, stub.base_url, tmp_path / "artifacts", RUNINFRA_EMBED_BATCH_SIZE=str(batch),
                        RUNINFRA_EMBED_CONCURRENCY="2", RUNINFRA_BUILD_PARTS="2")
        loaded = cli(env, "corpus", "load", str(corpus_file), "--collection", "kb", "--model", MODEL)
        assert loaded.returncode == 0, loaded.stderr
        workers = [Proc(["worker"], env, tmp_path / f"worker-{i}.log") for i in range(2)]
        try:
            wait_until(lambda: all('"worker.started"' in w.output() for w in workers), timeout=30,
                       what="both workers to start")
            body, headers = signed_delivery(event)
            assert httpx.post(receiver_url + "/webhooks/runinfra", content=body, headers=headers, timeout=30).is_success
            wait_until(lambda: db.hget(keys.event(event["id"]), "state") == b"succeeded", timeout=60,
                       what="the shared build to finish", interval=0.1)
        finally:
            for w in workers:
                w.terminate()
        charges = stub.charges()
        calls = [c for c in stub.calls() if c["route"] == "/v1/embeddings"]
    per_worker = [log_events(tmp_path / f"worker-{i}.log") for i in range(2)]
    ran = [sum(e.get("batches_here", 0) for e in events if e.get("event") in ("embeddings.done", "embeddings.part"))
           for events in per_worker]
    flips = sum(e.get("event") == "embeddings.done" for events in per_worker for e in events)

    assert all(n > 0 for n in ran), f"batches per worker: {ran}"
    assert sum(ran) == batches
    assert flips == 1
    assert charges["total"] == batches and set(charges["by_key"].values()) == {1}
    expected = {idempotency_key(event["id"], f"embed:kb:{REVISION}:1", i, 0) for i in range(batches)}
    assert {c["idempotency_key"] for c in calls} == expected
    assert db.hget(keys.corpus_meta("kb"), "revision") == REVISION.encode()


def context(redis: Redis, redis_url: str, tmp_path: Path, stub: StubServer, event_id: str) -> HandlerContext:
    settings = make_settings(redis_url, tmp_path, RUNINFRA_BASE_URL=stub.base_url, RUNINFRA_API_KEY=STUB_API_KEY,
                             RUNINFRA_EMBED_BATCH_SIZE=2, RUNINFRA_GATEWAY_MAX_ATTEMPTS=1, RUNINFRA_JOB_TIMEOUT=0.5,
                             RUNINFRA_EMBED_CONCURRENCY=2)
    return HandlerContext(event_id=event_id, settings=settings, redis=redis,
                          gateway=GatewayClient.from_settings(settings))


async def test_a_batch_held_by_a_dead_helper_is_taken_over_once_its_lease_ends(
    redis: Redis, redis_url: str, tmp_path: Path, stub: StubServer
) -> None:
    """A helper that claimed batch 1 and died leaves it leased; the event's job does every other batch, then
    takes batch 1 when the lease ends, and flips: each of the 5 batches charged once."""
    await load_corpus(redis, [json.dumps({"id": f"d{i}", "text": f"text {i}"}) for i in range(10)], collection="kb",
                      model=MODEL)
    build = await start_build(redis, "kb", model=MODEL, revision=REVISION, created=1, batch_size=2)
    assert build is not None
    claims = BatchClaims(redis)
    assert await claim_batch(claims, build, owner="dead-helper", lease_s=0.4) == 0  # the helper dies with it

    ctx = context(redis, redis_url, tmp_path, stub, "evt_shared")
    assert ctx.gateway is not None
    async with embeddings.open_store(ctx.require_settings(), redis) as store:
        try:
            assert await embeddings.embed_collection(ctx, store, "kb", model=MODEL, revision=REVISION, created=1)
        finally:
            await ctx.gateway.aclose()
    charges = stub.charges()
    assert charges["total"] == 5 and set(charges["by_key"].values()) == {1}
    assert (await as_async_db(redis).hget(keys.corpus_meta("kb"), "revision")) == REVISION.encode()
    assert not await redis.exists(keys.corpus_claims("kb", REVISION))


async def test_claims_hand_out_each_batch_once_until_released(redis: Redis) -> None:
    """Two owners claiming in turn get distinct batches; once every batch is held, a claim gets none; what an
    owner gives back is the next batch claimed."""
    await load_corpus(redis, [json.dumps({"id": f"d{i}", "text": f"t{i}"}) for i in range(6)], collection="kb",
                      model=MODEL)
    build = await start_build(redis, "kb", model=MODEL, revision=REVISION, created=1, batch_size=2)
    assert build is not None
    claims = BatchClaims(redis)
    got = [await claim_batch(claims, build, owner=owner, lease_s=30) for owner in ("a", "b", "a")]
    assert got == [0, 1, 2]
    assert await claim_batch(claims, build, owner="b", lease_s=30) is None
    assert await corpus.release_batches(claims, build, owner="a") == 2
    assert await claim_batch(claims, build, owner="b", lease_s=30) == 0
    assert await claim_batch(claims, build, owner="b", lease_s=30) == 2


async def test_a_helper_joins_only_a_build_in_progress_and_a_load_ends_its_claims(redis: Redis) -> None:
    """join_build finds nothing before a build starts; after a load, claiming for the old build raises
    CorpusChanged (the helper stops) and the claims are gone."""
    lines = [json.dumps({"id": f"d{i}", "text": f"t{i}"}) for i in range(4)]
    await load_corpus(redis, lines, collection="kb", model=MODEL)
    assert await join_build(redis, "kb", REVISION) is None
    build = await start_build(redis, "kb", model=MODEL, revision=REVISION, created=1, batch_size=2)
    assert build is not None
    joined = await join_build(redis, "kb", REVISION)
    assert joined is not None and joined.batches == build.batches and joined.marker == build.marker
    claims = BatchClaims(redis)
    assert await claim_batch(claims, joined, owner="h", lease_s=30) == 0
    await load_corpus(redis, lines, collection="kb", model=MODEL)
    assert not await redis.exists(keys.corpus_claims("kb", REVISION))
    with pytest.raises(CorpusChanged):
        await claim_batch(claims, joined, owner="h", lease_s=30)


@pytest.mark.parametrize(("index", "value"), [(2, "many"), (3, "0"), (4, ""), (5, "last")])
def test_claim_refuses_bad_arguments_and_writes_nothing(db: Db, index: int, value: str) -> None:
    """A batch count, lease, owner or finished batch that is not what the claim script needs is an error
    naming the script, and nothing is written."""
    meta, progress, claims = keys.corpus_meta("kb"), keys.corpus_progress("kb", "r"), keys.corpus_claims("kb", "r")
    db.hset(meta, "build:r", "m")
    args = ["build:r", "m", "3", "1000", "owner", "-1"]
    assert db.eval(CLAIM_SCRIPT, 3, meta, progress, claims, *args) == 0  # the arguments as given are fine
    db.delete(claims)
    args[index] = value
    with pytest.raises(ResponseError, match=r"corpus\.claim: bad arguments"):
        db.eval(CLAIM_SCRIPT, 3, meta, progress, claims, *args)
    assert not db.exists(progress, claims)
