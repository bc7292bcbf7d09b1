"""The vector stores on their own: the setting, packing, search order, Qdrant's alias, payload and lock."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient
from redis.asyncio import Redis

from runinfra_webhooks.service.settings import ConfigError
from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.vectors import (
    Slot,
    VectorStore,
    VectorStoreBusy,
    VectorStoreError,
    open_vector_store,
    parse_store_url,
)
from tests.conftest import make_settings
from tests.processes import cli, stack_env
from tests.redis_server import as_async_db

SLOT = Slot("docs", "rev_0001", 1)


@pytest.mark.parametrize(
    ("value", "kind", "location"),
    [
        ("redis", "redis", ""),
        ("qdrant+http://qdrant:6333", "qdrant-http", "http://qdrant:6333"),
        ("qdrant+https://cluster.example/", "qdrant-http", "https://cluster.example"),
        ("qdrant+path:///var/lib/vectors/", "qdrant-path", "/var/lib/vectors"),
    ],
)
def test_store_setting_names_redis_a_qdrant_server_or_a_directory(value: str, kind: str, location: str) -> None:
    """RUNINFRA_VECTOR_STORE takes redis, a Qdrant http(s) URL, or an absolute directory for embedded mode."""
    parsed = parse_store_url(value)
    assert (parsed.kind, parsed.location) == (kind, location)


@pytest.mark.parametrize(
    "value", ["", "qdrant", "postgres://x", "qdrant+path://relative/dir", "qdrant+path:///", "qdrant+http://",
              "qdrant+http://user:secret@host:6333", "qdrant+http://host:notaport"],
)
def test_bad_store_setting_stops_start_up_naming_the_variable_not_the_value(
    value: str, redis_url: str, tmp_path: Path
) -> None:
    """A store setting of no known form is one line naming RUNINFRA_VECTOR_STORE, never echoing the value."""
    with pytest.raises(ConfigError, match="RUNINFRA_VECTOR_STORE: invalid setting") as caught:
        make_settings(redis_url, tmp_path, RUNINFRA_VECTOR_STORE=value)
    assert "secret" not in str(caught.value)


async def test_redis_store_keeps_vectors_as_packed_float32(redis: Redis) -> None:
    """A vector of 1,024 dimensions takes 4,096 bytes in Redis, not its JSON text."""
    async with open_vector_store("redis", redis) as store:
        await store.write(SLOT, model="m", ids=["a"], vectors=[[0.1] * 1024])
        assert await store.vectors(SLOT, ["a"]) == [pytest.approx([0.1] * 1024, rel=1e-6)]
    raw = await as_async_db(redis).hget(keys.corpus_vectors("docs", "rev_0001", 1), "a")
    assert raw is not None and len(raw) == 4096


async def test_search_ranks_by_cosine_nearest_first_and_stops_at_k(store: VectorStore) -> None:
    """Search gives the k nearest by cosine similarity, best first, whatever the vectors' lengths."""
    await store.write(SLOT, model="m", ids=["east", "north", "northeast", "west"],
                      vectors=[[5.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-3.0, 0.0]])
    hits = await store.search(SLOT, [1.0, 0.1], 3)
    assert [h.id for h in hits] == ["east", "northeast", "north"]
    assert hits[0].score == pytest.approx(0.995, abs=1e-3)
    assert await store.search(Slot("docs", "never", 1), [1.0, 0.0], 3) == []


async def test_search_of_wrong_dimension_is_a_store_error(redis: Redis) -> None:
    """A query of another dimension than the stored vectors is refused with a clear error."""
    async with open_vector_store("redis", redis) as store:
        await store.write(SLOT, model="m", ids=["a"], vectors=[[1.0, 0.0]])
        with pytest.raises(VectorStoreError, match="dimensions"):
            await store.search(SLOT, [1.0, 0.0, 0.0], 1)


async def test_write_rejects_mismatched_batch(store: VectorStore) -> None:
    """A batch whose ids and vectors differ in count, or whose vectors differ in dimension, writes nothing."""
    with pytest.raises(ValueError, match="ids"):
        await store.write(SLOT, model="m", ids=["a", "b"], vectors=[[1.0]])
    with pytest.raises(ValueError, match="dimension"):
        await store.write(SLOT, model="m", ids=["a", "b"], vectors=[[1.0], [1.0, 2.0]])
    assert await store.count(SLOT) == 0


async def test_prune_keeps_only_the_named_slots_of_that_collection(store: VectorStore) -> None:
    """Prune drops every other slot of the collection and leaves other collections alone."""
    old, other = Slot("docs", "rev_0000", 1), Slot("docs.more", "rev_0000", 1)
    for slot in (SLOT, old, other):
        await store.write(slot, model="m", ids=["a"], vectors=[[1.0, 0.0]])
    await store.prune("docs", keep=[SLOT])
    assert [await store.count(s) for s in (SLOT, old, other)] == [1, 0, 1]


async def test_qdrant_alias_follows_the_active_slot_and_points_keep_their_payload(redis: Redis, tmp_path: Path) -> None:
    """In Qdrant the collection's alias names the active slot, and each point carries model, revision, id."""
    url = f"qdrant+path://{tmp_path / 'q'}"
    second = Slot("docs", "rev_0002", 1)
    async with open_vector_store(url, redis) as store:
        for slot in (SLOT, second):
            await store.write(slot, model="bge-m3", ids=["doc-1"], vectors=[[3.0, 4.0]])
        await store.activate(SLOT)
        await store.activate(second)
        await store.activate(second)
    client = AsyncQdrantClient(path=str(tmp_path / "q"))
    try:
        aliases = {a.alias_name: a.collection_name for a in (await client.get_aliases()).aliases}
        assert aliases == {"docs": "docs@rev_0002@v1"}
        points, _ = await client.scroll("docs", with_payload=True, with_vectors=False)
        assert [p.payload for p in points] == [
            {"document_id": "doc-1", "model": "bge-m3", "revision": "rev_0002", "norm": pytest.approx(5.0)}
        ]
    finally:
        await client.close()


async def test_qdrant_embedded_mode_shares_one_client_in_a_process_and_waits_for_another(
    redis: Redis, tmp_path: Path
) -> None:
    """Two openers in one process share the directory; another process holding it makes open wait, then
    VectorStoreBusy with a message that says to use a server."""
    path = tmp_path / "q"
    url = f"qdrant+path://{path}"
    async with open_vector_store(url, redis) as first, open_vector_store(url, redis) as second:
        await first.write(SLOT, model="m", ids=["a"], vectors=[[1.0, 0.0]])
        assert await second.count(SLOT) == 1
    holder = subprocess.Popen(  # noqa: ASYNC220 - a lock holder that outlives this await-free setup
        [sys.executable, "-c",
         "import sys, time; from qdrant_client import QdrantClient; c = QdrantClient(path=sys.argv[1]); "
         "print('locked', flush=True); time.sleep(30)", str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(VectorStoreBusy, match="qdrant"):
            async with open_vector_store(url, redis, lock_wait=0.5):
                pass
        assert time.monotonic() - started >= 0.5
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    async with open_vector_store(url, redis, lock_wait=5) as again:
        assert await again.count(SLOT) == 1


def test_corpus_search_refuses_bad_usage_and_unknown_collections(redis_url: str, tmp_path: Path) -> None:
    """`corpus search` with -k below 1 or empty text is bad usage (2); an unknown collection is a failure (1)."""
    env = stack_env(redis_url, "http://127.0.0.1:9/v1", tmp_path / "artifacts")
    assert cli(env, "corpus", "search", "tea", "--collection", "kb", "-k", "0").returncode == 2
    assert cli(env, "corpus", "search", " ", "--collection", "kb").returncode == 2
    unknown = cli(env, "corpus", "search", "tea", "--collection", "nope")
    assert unknown.returncode == 1 and "does not exist" in unknown.stderr and unknown.stdout == ""
    bad_store = cli({**env, "RUNINFRA_VECTOR_STORE": "qdrant+path://relative"}, "corpus", "export",
                     "--collection", "kb")
    assert bad_store.returncode == 2 and "RUNINFRA_VECTOR_STORE" in bad_store.stderr
