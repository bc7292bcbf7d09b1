"""Re-embedding against real Redis and the gateway emulator over real HTTP, into both vector stores."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from runinfra_webhooks.handlers import corpus, embeddings
from runinfra_webhooks.handlers.context import HandlerContext
from runinfra_webhooks.handlers.corpus import active_slot, export_corpus, load_corpus
from runinfra_webhooks.handlers.errors import PermanentError, TransientError
from runinfra_webhooks.service.core.events import DeploymentReady, DeploymentUpdated, parse_event
from runinfra_webhooks.service.gateway.client import GatewayClient, GatewayTransientError, idempotency_key
from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.vectors import Slot, VectorStore, open_vector_store
from tests.builders import example_event, signed_delivery
from tests.conftest import make_settings
from tests.processes import cli, stack_env, wait_until, worker_process
from tests.redis_server import as_async_db
from tests.stubserver import STUB_API_KEY, StubServer
from tests.vectorstores import store_url

MODEL = "bge-m3"


class Runner:
    """Runs the handler for an event the way a job would: a fresh context per attempt."""

    def __init__(self, redis: Redis, redis_url: str, tmp_path: Path, stub: StubServer, store_kind: str) -> None:
        self.redis, self.redis_url, self.tmp_path, self.stub = redis, redis_url, tmp_path, stub
        self.store_url = store_url(store_kind, tmp_path)
        self.request_ids: list[str] = []

    def context(self, event_id: str, **env: object) -> HandlerContext:
        settings = make_settings(
            self.redis_url,
            self.tmp_path,
            RUNINFRA_BASE_URL=self.stub.base_url,
            RUNINFRA_API_KEY=STUB_API_KEY,
            RUNINFRA_EMBED_BATCH_SIZE=2,
            RUNINFRA_GATEWAY_MAX_ATTEMPTS=1,
            RUNINFRA_VECTOR_STORE=self.store_url,
            # One batch at a time, so tests can count calls in order; the concurrency tests set more.
            **{"RUNINFRA_EMBED_CONCURRENCY": 1, **env},
        )

        async def record(request_id: str, idempotency_key: str) -> None:
            self.request_ids.append(request_id)

        return HandlerContext(event_id=event_id, settings=settings, redis=self.redis,
                              gateway=GatewayClient.from_settings(settings), record_gateway_call=record)

    async def run(self, event: DeploymentReady | DeploymentUpdated, **env: object) -> None:
        ctx = self.context(event.id, **env)
        assert ctx.gateway is not None
        try:
            await embeddings.handle(event, ctx)
        finally:
            await ctx.gateway.aclose()

    def embed_calls(self) -> list[dict[str, Any]]:
        return [c for c in self.stub.calls() if c["route"] == "/v1/embeddings"]

    async def exported(self, collection: str) -> list[dict[str, Any]]:
        async with open_vector_store(self.store_url, self.redis) as store:
            return [row async for row in export_corpus(self.redis, store, collection)]

    async def count(self, slot: Slot) -> int:
        async with open_vector_store(self.store_url, self.redis) as store:
            return await store.count(slot)


@pytest.fixture
def runner(redis: Redis, redis_url: str, tmp_path: Path, stub: StubServer, store_kind: str) -> Runner:
    return Runner(redis, redis_url, tmp_path, stub, store_kind)


def ready(revision: str = "rev_0001", *, created: int = 1_000, **data: Any) -> DeploymentReady:
    base = example_event("deployment.ready", created=created)
    base["data"] = {**base["data"], "model": MODEL, "revision": revision, **data}
    event = parse_event(base)
    assert isinstance(event, DeploymentReady)
    return event


def updated(revision: str, previous: str, *, created: int) -> DeploymentUpdated:
    base = example_event("deployment.updated", created=created)
    base["data"] = {**base["data"], "model": MODEL, "revision": revision, "previous_revision": previous}
    event = parse_event(base)
    assert isinstance(event, DeploymentUpdated)
    return event


def docs(n: int, prefix: str = "text") -> list[str]:
    return [json.dumps({"id": f"d{i}", "text": f"{prefix} {i}"}) for i in range(n)]


# --- pure core ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        {"object": "list"},
        {"data": {}},
        {"data": [{"index": 0, "embedding": [0.1]}]},
        {"data": [{"index": 0, "embedding": [0.1]}, {"index": 0, "embedding": [0.2]}]},
        {"data": [{"index": 0, "embedding": [0.1]}, {"index": 2, "embedding": [0.2]}]},
        {"data": [{"index": 0, "embedding": [0.1]}, {"index": True, "embedding": [0.2]}]},
        {"data": [{"index": 0, "embedding": [0.1]}, {"index": 1, "embedding": []}]},
        {"data": [{"index": 0, "embedding": [0.1]}, {"index": 1, "embedding": ["x"]}]},
        {"data": [{"index": 0, "embedding": [0.1]}, {"index": 1, "embedding": [float("nan")]}]},
        {"data": [{"index": 0, "embedding": [0.1]}, {"index": 1, "embedding": [0.1, 0.2]}]},
        {"data": [{"index": 0, "embedding": [0.1]}, "not an object"]},
    ],
)
def test_malformed_embeddings_response_is_permanent(payload: Any) -> None:
    """Anything but one finite vector of one dimension per input, by index, is invalid_gateway_response."""
    with pytest.raises(PermanentError) as caught:
        embeddings.parse_embeddings(payload, 2)
    assert caught.value.code == "invalid_gateway_response"


def test_embeddings_response_is_ordered_by_index() -> None:
    """Vectors are returned in input order even when the response lists them out of order."""
    payload = {"data": [{"index": 1, "embedding": [2, 2]}, {"index": 0, "embedding": [1.5, 1]}]}
    assert embeddings.parse_embeddings(payload, 2) == [[1.5, 1.0], [2.0, 2.0]]


# --- the reaction -------------------------------------------------------------------------------------
async def test_embeds_collection_in_batches_with_keys_and_auth(runner: Runner, redis: Redis) -> None:
    """Five documents at batch size 2 are three POSTs, in load order, with bearer auth and per-batch keys."""
    await load_corpus(redis, docs(5), collection="kb", model=MODEL)
    event = ready()
    await runner.run(event)

    calls = runner.embed_calls()
    assert [c["body"] for c in calls] == [
        {"model": MODEL, "input": ["text 0", "text 1"]},
        {"model": MODEL, "input": ["text 2", "text 3"]},
        {"model": MODEL, "input": ["text 4"]},
    ]
    expected_keys = [idempotency_key(event.id, "embed:kb:rev_0001:1", i, 0) for i in range(3)]
    assert [c["idempotency_key"] for c in calls] == expected_keys
    assert all(c["authorization_ok"] and c["status"] == 200 for c in calls)
    assert all(uuid.UUID(c["client_request_id"]) for c in calls)
    assert runner.request_ids == [c["request_id"] for c in calls]
    assert runner.stub.charges()["total"] == 3


async def test_stores_vectors_with_model_and_revision_for_export(runner: Runner, redis: Redis) -> None:
    """After the run the revision is active, progress is gone and export gives the gateway's vectors."""
    await load_corpus(redis, docs(3), collection="kb", model=MODEL)
    await runner.run(ready())

    meta = await as_async_db(redis).hgetall(keys.corpus_meta("kb"))
    assert meta[b"revision"] == b"rev_0001"
    assert not await redis.exists(keys.corpus_progress("kb", "rev_0001"))
    rows = await runner.exported("kb")
    returned = [item for c in runner.embed_calls() for item in c["body"]["input"]]
    assert [r["id"] for r in rows] == ["d0", "d1", "d2"] and len(returned) == 3
    assert {(r["model"], r["revision"]) for r in rows} == {(MODEL, "rev_0001")}
    assert all(len(r["embedding"]) == 8 and all(isinstance(x, float) for x in r["embedding"]) for r in rows)
    assert len({tuple(r["embedding"]) for r in rows}) == 3


async def test_resumes_after_failed_batch_calling_only_remaining_batches(runner: Runner, redis: Redis) -> None:
    """A failure on batch 3 of 5 leaves two batches stored; the retry calls batches 3-5 only, 5 charges in all."""
    await load_corpus(redis, docs(10), collection="kb", model=MODEL)
    event = ready()
    runner.stub.set_faults(route="/v1/embeddings", script=[200, 200, 503])
    with pytest.raises(GatewayTransientError):
        await runner.run(event)
    assert await corpus.done_batches(redis, "kb", "rev_0001") == {0, 1}

    await runner.run(event)
    inputs = [c["body"]["input"][0] for c in runner.embed_calls()]
    assert inputs == ["text 0", "text 2", "text 4", "text 4", "text 6", "text 8"]
    charges = runner.stub.charges()
    assert charges["total"] == 5
    assert set(charges["by_key"].values()) == {1}
    assert len(await runner.exported("kb")) == 10


async def test_batch_charged_before_crash_is_replayed_not_recharged(
    runner: Runner, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the gateway answered but before the commit resends the same key: replayed, not charged."""
    await load_corpus(redis, docs(6), collection="kb", model=MODEL)
    event = ready()
    real_store = corpus.store_batch

    async def crash_on_second(redis: Redis, store: VectorStore, build: corpus.Build, index: int, vectors: Any) -> bool:
        if index == 1:
            raise ConnectionError("worker died")
        return await real_store(redis, store, build, index, vectors)

    monkeypatch.setattr(embeddings, "store_batch", crash_on_second)
    with pytest.raises(ConnectionError):
        await runner.run(event)
    monkeypatch.setattr(embeddings, "store_batch", real_store)
    await runner.run(event)

    calls = runner.embed_calls()
    assert [c["replayed"] for c in calls] == [False, False, True, False]
    assert runner.stub.charges()["total"] == 3
    assert len(await runner.exported("kb")) == 6


async def test_same_revision_twice_makes_no_new_calls(runner: Runner, redis: Redis) -> None:
    """Once a collection is active at the revision, another run for it calls nothing."""
    await load_corpus(redis, docs(3), collection="kb", model=MODEL)
    event = ready()
    await runner.run(event)
    await runner.run(event)
    await runner.run(ready())  # another event, same revision
    assert len(runner.embed_calls()) == 2
    assert runner.stub.charges()["total"] == 2


async def test_ignores_deployments_of_other_modalities(runner: Runner, redis: Redis) -> None:
    """A ready deployment whose modality is not embeddings embeds nothing."""
    await load_corpus(redis, docs(3), collection="kb", model=MODEL)
    await runner.run(ready(modality="llm"))
    assert runner.stub.calls() == []
    assert b"revision" not in await as_async_db(redis).hgetall(keys.corpus_meta("kb"))


async def test_embeds_only_collections_bound_to_the_event_model(runner: Runner, redis: Redis) -> None:
    """Every collection of the event's model is embedded; a collection of another model is left alone."""
    await load_corpus(redis, docs(1, "alpha"), collection="a", model=MODEL)
    await load_corpus(redis, docs(1, "beta"), collection="b", model=MODEL)
    await load_corpus(redis, docs(1, "other"), collection="c", model="other-model")
    await runner.run(ready())
    assert sorted(c["body"]["input"][0] for c in runner.embed_calls()) == ["alpha 0", "beta 0"]
    assert await as_async_db(redis).hget(keys.corpus_meta("c"), "revision") is None


async def test_updated_revision_reembeds_and_drops_previous_vectors(runner: Runner, redis: Redis) -> None:
    """deployment.updated to a new revision re-embeds, flips the revision and deletes the old vectors."""
    await load_corpus(redis, docs(3), collection="kb", model=MODEL)
    await runner.run(ready("rev_0001", created=1_000))
    await runner.run(updated("rev_0002", "rev_0001", created=2_000))
    assert len(runner.embed_calls()) == 4
    assert {r["revision"] for r in await runner.exported("kb")} == {"rev_0002"}
    assert await runner.count(Slot("kb", "rev_0001", 1)) == 0


async def test_late_older_event_does_not_replace_newer_revision(runner: Runner, redis: Redis) -> None:
    """An out-of-order ready for an older revision arriving after a newer one is embedded changes nothing."""
    await load_corpus(redis, docs(3), collection="kb", model=MODEL)
    await runner.run(updated("rev_0002", "rev_0001", created=2_000))
    await runner.run(ready("rev_0001", created=1_000))
    assert len(runner.embed_calls()) == 2
    assert {r["revision"] for r in await runner.exported("kb")} == {"rev_0002"}


async def test_load_during_build_restarts_it_with_new_keys(
    runner: Runner, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load mid-build makes the attempt transient; the retry embeds the new corpus under new keys."""
    await load_corpus(redis, docs(4), collection="kb", model=MODEL)
    event = ready()
    real_store = corpus.store_batch

    async def load_then_store(redis: Redis, store: VectorStore, build: corpus.Build, index: int, vectors: Any) -> bool:
        if index == 1 and build.version == 1:
            await load_corpus(redis, [json.dumps({"id": "d0", "text": "changed"})], collection="kb", model=MODEL)
        return await real_store(redis, store, build, index, vectors)

    monkeypatch.setattr(embeddings, "store_batch", load_then_store)
    with pytest.raises(TransientError, match="starts over"):
        await runner.run(event)
    await runner.run(event)

    calls = runner.embed_calls()
    assert [c["body"]["input"] for c in calls[2:]] == [["changed", "text 1"], ["text 2", "text 3"]]
    assert len({c["idempotency_key"] for c in calls}) == 4
    rows = await runner.exported("kb")
    assert [r["id"] for r in rows] == ["d0", "d1", "d2", "d3"]


async def test_empty_collection_becomes_active_without_calls(runner: Runner, redis: Redis) -> None:
    """A collection with no documents flips to the revision without calling the gateway."""
    await load_corpus(redis, [], collection="kb", model=MODEL)
    await runner.run(ready())
    assert runner.stub.calls() == []
    assert await runner.exported("kb") == []


@pytest.mark.parametrize("crash_at", range(4))
@pytest.mark.parametrize("after_write", [False, True], ids=["before-write", "after-write"])
async def test_build_resumes_after_a_crash_at_any_batch_charging_each_batch_once(
    runner: Runner, redis: Redis, monkeypatch: pytest.MonkeyPatch, crash_at: int, after_write: bool
) -> None:
    """A worker dying at any batch, before or after its vectors reach the store, resumes there: every batch is
    charged once, and the finished collection holds the gateway's vector of every document."""
    await load_corpus(redis, docs(7), collection="kb", model=MODEL)
    event = ready()
    real_store = corpus.store_batch

    async def dying(redis: Redis, store: VectorStore, build: corpus.Build, index: int, vectors: Any) -> bool:
        if index == crash_at:
            if after_write:
                await store.write(build.slot, model=build.model, ids=build.batches[index], vectors=vectors)
            raise ConnectionError("worker died")
        return await real_store(redis, store, build, index, vectors)

    monkeypatch.setattr(embeddings, "store_batch", dying)
    with pytest.raises(ConnectionError):
        await runner.run(event)
    assert await active_slot(redis, "kb") is None
    assert await corpus.done_batches(redis, "kb", "rev_0001") == set(range(crash_at))
    monkeypatch.setattr(embeddings, "store_batch", real_store)
    await runner.run(event)

    charges = runner.stub.charges()
    assert charges["total"] == 4 and set(charges["by_key"].values()) == {1}
    assert [c["replayed"] for c in runner.embed_calls()].count(True) == 1  # only the batch that died is resent
    rows = await runner.exported("kb")
    assert [r["id"] for r in rows] == [f"d{i}" for i in range(7)]
    assert len({tuple(round(x, 5) for x in r["embedding"]) for r in rows}) == 7
    assert await active_slot(redis, "kb") == Slot("kb", "rev_0001", 1)


# --- the whole loop with real processes ---------------------------------------------------------------
def test_worker_reembeds_a_loaded_corpus_and_search_finds_each_document_by_its_own_text(
    receiver_url: str, redis_url: str, stub: StubServer, tmp_path: Path, store_kind: str
) -> None:
    """Load, re-embed through a real worker and the emulator, then `corpus search` puts each probed document
    first when searching its own text, and `corpus export` gives every vector, in either store."""
    env = stack_env(redis_url, stub.base_url, tmp_path / "artifacts", RUNINFRA_EMBED_BATCH_SIZE="8",
                    RUNINFRA_VECTOR_STORE=store_url(store_kind, tmp_path))
    texts = [f"document {i} about {topic}" for i, topic in enumerate(["tides", "owls", "rust", "tea"] * 10)]
    corpus_file = tmp_path / "corpus.jsonl"
    corpus_file.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    loaded = cli(env, "corpus", "load", str(corpus_file), "--collection", "kb", "--model", MODEL)
    assert loaded.returncode == 0, loaded.stderr
    refused = cli(env, "corpus", "search", "owls", "--collection", "kb")
    assert refused.returncode == 1 and "no embedded revision" in refused.stderr

    event = example_event("deployment.ready")
    with worker_process(env, tmp_path / "worker.log"):
        body, headers = signed_delivery(event)
        assert httpx.post(receiver_url + "/webhooks/runinfra", content=body, headers=headers, timeout=30).is_success
        wait_until(lambda: json.loads(cli(env, "events", "show", event["id"]).stdout or "{}").get("state")
                   == "succeeded", timeout=60, what="the re-embedding event to succeed", interval=0.3)
        assert stub.charges()["total"] == 5
        # While the worker runs: Qdrant's embedded mode is locked only during a build, not between builds.
        for probe in (0, 13, 26, 39):
            found = cli(env, "corpus", "search", texts[probe], "--collection", "kb", "-k", "3")
            assert found.returncode == 0, found.stderr
            hits = [json.loads(line) for line in found.stdout.splitlines()]
            assert len(hits) == 3 and set(hits[0]) == {"id", "score"}
            assert hits[0]["id"] == f"d{probe}" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
            assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    exported = cli(env, "corpus", "export", "--collection", "kb")
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [r["id"] for r in rows] == [f"d{i}" for i in range(40)]
    assert {(r["model"], r["revision"], len(r["embedding"])) for r in rows} == {(MODEL, "rev_0001", 8)}


async def test_batches_in_flight_at_once_each_charge_once_and_a_failure_stops_the_rest(
    runner: Runner, redis: Redis
) -> None:
    """With 4 batches in flight, a failing batch ends the attempt with its own error; the retry runs only the
    batches not done, and every batch is charged once."""
    await load_corpus(redis, docs(20), collection="kb", model=MODEL)
    event = ready()
    runner.stub.set_faults(route="/v1/embeddings", script=[200, 200, 200, 503])
    with pytest.raises(GatewayTransientError):
        await runner.run(event, RUNINFRA_EMBED_CONCURRENCY=4)
    done = await corpus.done_batches(redis, "kb", "rev_0001")
    assert 0 < len(done) < 10
    await runner.run(event, RUNINFRA_EMBED_CONCURRENCY=4)
    charges = runner.stub.charges()
    assert charges["total"] == 10 and set(charges["by_key"].values()) == {1}
    assert [r["id"] for r in await runner.exported("kb")] == [f"d{i}" for i in range(20)]


async def test_a_permanent_failure_of_one_batch_among_several_stays_permanent(runner: Runner, redis: Redis) -> None:
    """A 422 on one of several concurrent batches dead-letters the event (its error is not wrapped away)."""
    await load_corpus(redis, docs(12), collection="kb", model=MODEL)
    runner.stub.set_faults(route="/v1/embeddings", script=[200, 422])
    with pytest.raises(Exception) as caught:
        await runner.run(ready(), RUNINFRA_EMBED_CONCURRENCY=3)
    assert not isinstance(caught.value, BaseExceptionGroup)
    assert getattr(caught.value, "status", None) == 422


async def test_emulator_embeddings_are_a_function_of_model_and_text_with_the_configured_dimension() -> None:
    """The emulator gives the same unit vector for the same model and text, of the length it was started with,
    so a search for a document's own text finds its stored vector exactly."""
    from runinfra_webhooks.service.devtools.gateway_stub import create_stub_app

    app = create_stub_app(api_key=None, dimensions=1024)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://stub") as client:

        async def embed(model: str, texts: list[str]) -> list[list[float]]:
            response = await client.post("/v1/embeddings", json={"model": model, "input": texts})
            assert response.status_code == 200
            return [item["embedding"] for item in response.json()["data"]]

        first, other = await embed(MODEL, ["tea", "owls"])
        (again,) = await embed(MODEL, ["tea"])
        (other_model,) = await embed("another-model", ["tea"])
    assert len(first) == 1024 and first == again
    assert first != other and first != other_model
    assert sum(x * x for x in first) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="dimensions"):
        create_stub_app(dimensions=0)
