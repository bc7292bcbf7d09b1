"""The corpus store on real Redis, with both vector stores: loading, binding, staleness, export, builds."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, overload

import pytest
from redis.asyncio import Redis

from runinfra_webhooks.handlers.corpus import (
    Build,
    CorpusChanged,
    CorpusError,
    active_slot,
    batch_texts,
    collection_names,
    collection_state,
    collections_for_model,
    commit_batch,
    complete_build,
    done_batches,
    export_corpus,
    load_corpus,
    parse_documents,
    split_batches,
    start_build,
    store_batch,
)
from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.vectors import Slot, VectorStore
from tests.redis_server import as_async_db


def lines(*docs: tuple[str, str]) -> list[str]:
    return [json.dumps({"id": i, "text": t}) + "\n" for i, t in docs]


async def ids_of(redis: Redis, collection: str) -> list[str]:
    return [i.decode() for i in await as_async_db(redis).lrange(keys.corpus_ids(collection), 0, -1)]


async def meta_of(redis: Redis, collection: str) -> dict[str, str]:
    raw = await as_async_db(redis).hgetall(keys.corpus_meta(collection))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def export(redis: Redis, store: VectorStore, collection: str) -> list[dict[str, Any]]:
    return [row async for row in export_corpus(redis, store, collection)]


async def embed_fake(redis: Redis, store: VectorStore, collection: str, *, model: str, revision: str,
                     created: int = 100) -> Build:
    """Run a whole build with vectors [position, 1] instead of a gateway."""
    build = await start_build(redis, collection, model=model, revision=revision, created=created, batch_size=2)
    assert build is not None
    position = 0
    for index, batch in enumerate(build.batches):
        vectors = [[float(position + j), 1.0] for j in range(len(batch))]
        position += len(batch)
        assert await store_batch(redis, store, build, index, vectors)
    assert await complete_build(redis, store, build, created=created)
    return build


# --- pure core ----------------------------------------------------------------------------------------
def test_split_batches_cuts_in_order_with_short_last_batch() -> None:
    """Ids are cut into consecutive slices of the batch size; the last one holds the rest."""
    assert split_batches(["a", "b", "c", "d", "e"], 2) == [("a", "b"), ("c", "d"), ("e",)]
    assert split_batches([], 3) == []
    with pytest.raises(ValueError, match="batch size"):
        split_batches(["a"], 0)


class CountingIds(Sequence[str]):
    """A list of ids that counts every id handed out, however it is read."""

    def __init__(self, ids: list[str]) -> None:
        self._ids, self.touched = ids, 0

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        got = self._ids[index]
        self.touched += len(got) if isinstance(index, slice) else 1
        return got

    def __iter__(self) -> Iterator[str]:
        for i in self._ids:
            self.touched += 1
            yield i


def test_build_cuts_ids_once_so_each_batch_costs_only_its_own_ids() -> None:
    """Making a build reads every id once; reaching each batch afterwards reads no id of the corpus again."""
    ids = CountingIds([f"d{i}" for i in range(10_000)])
    build = Build.cut("docs", "m", "r1", 1, 64, ids)
    after_cut = ids.touched
    assert after_cut <= 2 * len(ids)
    total = 0
    for index in range(len(build.batches)):  # what a build does per batch: its ids, its count
        total += len(build.batches[index])
        assert build.documents == len(ids)
    assert total == len(ids)
    assert ids.touched == after_cut  # no batch re-reads the corpus: the build is linear in its size


def test_parse_documents_keeps_first_place_and_last_text_of_repeated_id() -> None:
    """An id repeated within one file keeps its first position and takes the later text; blank lines skip."""
    docs = parse_documents(["\n", *lines(("a", "one"), ("b", "two"), ("a", "uno")), "   \n"])
    assert [(d.id, d.text) for d in docs] == [("a", "uno"), ("b", "two")]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('["a", "b"]', "JSON object"),
        ('{"text": "no id"}', '"id"'),
        ('{"id": 7, "text": "int id"}', '"id"'),
        ('{"id": "x", "text": ""}', '"text"'),
        ('{"id": "x", "text": 3}', '"text"'),
    ],
)
async def test_load_rejects_bad_line_with_its_number_and_writes_nothing(redis: Redis, bad: str, reason: str) -> None:
    """A bad line raises CorpusError naming line and reason, and nothing of the file is stored."""
    with pytest.raises(CorpusError, match=reason) as caught:
        await load_corpus(redis, [*lines(("a", "fine")), "\n", bad], collection="docs", model="m")
    assert caught.value.line == 3
    assert str(caught.value).startswith("line 3:")
    assert await redis.keys("*") == []


@pytest.mark.parametrize("name", ["", "a:ids", "with space", "x" * 129, "slash/y", "at@sign"])
async def test_load_rejects_collection_name_that_could_reach_other_keys(redis: Redis, name: str) -> None:
    """Collection names outside [A-Za-z0-9._-]{1,128} are refused before anything is written."""
    with pytest.raises(CorpusError, match="collection name"):
        await load_corpus(redis, lines(("a", "t")), collection=name, model="m")
    assert await redis.keys("*") == []


# --- loading -----------------------------------------------------------------------------------------
async def test_load_stores_ids_in_order_texts_and_model_binding(redis: Redis) -> None:
    """Ids go to the list in load order, texts to the hash, and the collection is bound to the model."""
    count = await load_corpus(redis, lines(("b", "bee"), ("a", "ay"), ("c", "see")), collection="docs", model="m1")
    assert count == 3
    assert await ids_of(redis, "docs") == ["b", "a", "c"]
    assert await as_async_db(redis).hget(keys.corpus_docs("docs"), "a") == b"ay"
    assert (await meta_of(redis, "docs"))["model"] == "m1"
    assert await collections_for_model(redis, "m1") == ["docs"]


async def test_reload_updates_text_without_duplicating_id(redis: Redis) -> None:
    """Loading a known id again replaces its text and keeps its single place; new ids are appended."""
    await load_corpus(redis, lines(("a", "old"), ("b", "bee")), collection="docs", model="m")
    await load_corpus(redis, lines(("c", "see"), ("a", "new")), collection="docs", model="m")
    assert await ids_of(redis, "docs") == ["a", "b", "c"]
    assert await as_async_db(redis).hget(keys.corpus_docs("docs"), "a") == b"new"


async def test_rebinding_to_another_model_moves_collection(redis: Redis) -> None:
    """A collection loaded for another model leaves the old model's set and joins the new one."""
    await load_corpus(redis, lines(("a", "t")), collection="docs", model="m1")
    await load_corpus(redis, lines(("a", "t")), collection="other", model="m1")
    await load_corpus(redis, lines(("b", "u")), collection="docs", model="m2")
    assert await collections_for_model(redis, "m1") == ["other"]
    assert await collections_for_model(redis, "m2") == ["docs"]
    assert (await meta_of(redis, "docs"))["model"] == "m2"


async def test_collections_for_model_are_sorted(redis: Redis) -> None:
    """The collections of a model come back sorted by name."""
    for name in ("zeta", "alpha", "mid"):
        await load_corpus(redis, lines(("a", "t")), collection=name, model="m")
    assert await collections_for_model(redis, "m") == ["alpha", "mid", "zeta"]
    assert await collections_for_model(redis, "unknown") == []


async def test_load_marks_embedded_collection_stale_so_old_vectors_are_never_read(
    redis: Redis, store: VectorStore
) -> None:
    """After a load the active revision is cleared, so export refuses until re-embedded; prune frees the slot."""
    await load_corpus(redis, lines(("a", "t"), ("b", "u")), collection="docs", model="m")
    build = await embed_fake(redis, store, "docs", model="m", revision="r1")
    assert len(await export(redis, store, "docs")) == 2

    await load_corpus(redis, lines(("c", "v")), collection="docs", model="m")
    meta = await meta_of(redis, "docs")
    assert "revision" not in meta
    assert meta["version"] == "2"
    assert await active_slot(redis, "docs") is None
    with pytest.raises(CorpusError, match="no embedded revision"):
        await export(redis, store, "docs")
    await store.prune("docs", keep=())
    assert await store.count(build.slot) == 0


# --- export ------------------------------------------------------------------------------------------
async def test_export_yields_active_revision_rows_in_load_order(redis: Redis, store: VectorStore) -> None:
    """Export gives id, model, revision and embedding per document, in load order, from either store."""
    await load_corpus(redis, lines(("b", "bee"), ("a", "ay"), ("c", "see")), collection="docs", model="m")
    await embed_fake(redis, store, "docs", model="m", revision="r1")
    rows = await export(redis, store, "docs")
    assert [(r["id"], r["model"], r["revision"]) for r in rows] == [("b", "m", "r1"), ("a", "m", "r1"),
                                                                    ("c", "m", "r1")]
    assert [r["embedding"] for r in rows] == [pytest.approx(v, rel=1e-6) for v in ([0, 1], [1, 1], [2, 1])]


async def test_export_of_unknown_collection_raises(redis: Redis, store: VectorStore) -> None:
    """Exporting a collection that was never loaded is a CorpusError."""
    with pytest.raises(CorpusError, match="does not exist"):
        await export(redis, store, "nope")


async def test_export_before_first_embedding_raises(redis: Redis, store: VectorStore) -> None:
    """A loaded but never embedded collection has nothing to export."""
    await load_corpus(redis, lines(("a", "t")), collection="docs", model="m")
    with pytest.raises(CorpusError, match="no embedded revision"):
        await export(redis, store, "docs")


# --- builds ------------------------------------------------------------------------------------------
async def test_storing_a_committed_batch_again_changes_progress_not(redis: Redis, store: VectorStore) -> None:
    """Storing a batch a second time (a retried job) rewrites its vectors, keeps progress, and says so."""
    await load_corpus(redis, lines(("a", "t"), ("b", "u"), ("c", "v")), collection="docs", model="m")
    build = await start_build(redis, "docs", model="m", revision="r1", created=1, batch_size=2)
    assert build is not None
    assert await store_batch(redis, store, build, 0, [[1.0, 0.0], [0.0, 1.0]])
    assert not await store_batch(redis, store, build, 0, [[1.0, 0.0], [0.0, 1.0]])
    assert await store.count(build.slot) == 2
    assert await store.vectors(build.slot, ["a", "c"]) == [pytest.approx([1.0, 0.0]), None]
    assert await done_batches(redis, "docs", "r1") == {0}


async def test_restarted_build_resumes_at_progress_with_pinned_batch_size(redis: Redis, store: VectorStore) -> None:
    """A build started again resumes after the finished batches, with the batch size it began with."""
    await load_corpus(redis, lines(*((str(i), "t") for i in range(5))), collection="docs", model="m")
    first = await start_build(redis, "docs", model="m", revision="r1", created=1, batch_size=2)
    assert first is not None
    await store_batch(redis, store, first, 0, [[1.0], [1.0]])
    again = await start_build(redis, "docs", model="m", revision="r1", created=1, batch_size=4)
    assert again is not None
    assert (again.done, again.batch_size, again.version) == (frozenset({0}), 2, first.version)
    assert again.pending == [1, 2]
    assert await batch_texts(redis, again, again.pending[0]) == ["t", "t"]


async def test_commit_after_a_load_raises_corpus_changed(redis: Redis, store: VectorStore) -> None:
    """A load during a build cancels it: its next commit raises CorpusChanged, in a slot the next build never reads."""
    await load_corpus(redis, lines(("a", "t"), ("b", "u"), ("c", "v")), collection="docs", model="m")
    build = await start_build(redis, "docs", model="m", revision="r1", created=1, batch_size=2)
    assert build is not None
    await store_batch(redis, store, build, 0, [[1.0], [2.0]])
    await load_corpus(redis, lines(("a", "changed")), collection="docs", model="m")
    assert not await redis.exists(keys.corpus_progress("docs", "r1"))
    with pytest.raises(CorpusChanged):
        await store_batch(redis, store, build, 1, [[3.0]])
    restarted = await start_build(redis, "docs", model="m", revision="r1", created=1, batch_size=2)
    assert restarted is not None
    assert (restarted.done, restarted.version) == (frozenset(), build.version + 1)
    assert restarted.slot != build.slot
    assert await store.count(restarted.slot) == 0


async def test_flip_refuses_while_the_store_lacks_vectors_and_restarts_the_build(
    redis: Redis, store: VectorStore
) -> None:
    """A slot that lost vectors (dropped under a running build) does not flip: the build goes back to batch 0."""
    await load_corpus(redis, lines(("a", "t"), ("b", "u"), ("c", "v")), collection="docs", model="m")
    build = await start_build(redis, "docs", model="m", revision="r1", created=1, batch_size=2)
    assert build is not None
    await store_batch(redis, store, build, 0, [[1.0], [2.0]])
    await store.drop(build.slot)
    await store_batch(redis, store, build, 1, [[3.0]])
    with pytest.raises(CorpusChanged, match="holds 1 of 3"):
        await complete_build(redis, store, build, created=1)
    assert await active_slot(redis, "docs") is None
    again = await start_build(redis, "docs", model="m", revision="r1", created=1, batch_size=2)
    assert again is not None and again.done == frozenset()


async def test_start_build_skips_active_revision_other_model_and_older_event(redis: Redis, store: VectorStore) -> None:
    """Nothing to build at the active revision, for another model, or for an event older than the active one."""
    await load_corpus(redis, lines(("a", "t")), collection="docs", model="m")
    await embed_fake(redis, store, "docs", model="m", revision="r2", created=200)
    assert await start_build(redis, "docs", model="m", revision="r2", created=200, batch_size=2) is None
    assert await start_build(redis, "docs", model="other", revision="r3", created=300, batch_size=2) is None
    assert await start_build(redis, "docs", model="m", revision="r1", created=100, batch_size=2) is None
    assert await start_build(redis, "docs", model="m", revision="r3", created=300, batch_size=2) is not None


async def test_finish_of_build_overtaken_by_newer_revision_drops_it(redis: Redis, store: VectorStore) -> None:
    """A build that ends after a newer event's revision became active does not flip back and frees its vectors."""
    await load_corpus(redis, lines(("a", "t")), collection="docs", model="m")
    old = await start_build(redis, "docs", model="m", revision="r1", created=100, batch_size=2)
    assert old is not None
    await store_batch(redis, store, old, 0, [[1.0]])
    await embed_fake(redis, store, "docs", model="m", revision="r2", created=200)
    assert not await complete_build(redis, store, old, created=100)
    assert (await meta_of(redis, "docs"))["revision"] == "r2"
    assert not await redis.exists(keys.corpus_progress("docs", "r1"))
    assert await store.count(old.slot) == 0
    assert [r["revision"] for r in await export(redis, store, "docs")] == ["r2"]


async def test_flip_drops_previous_revision_vectors_and_progress(redis: Redis, store: VectorStore) -> None:
    """Activating a new revision drops the previous revision's slot and the finished progress key."""
    await load_corpus(redis, lines(("a", "t")), collection="docs", model="m")
    first = await embed_fake(redis, store, "docs", model="m", revision="r1", created=100)
    second = await embed_fake(redis, store, "docs", model="m", revision="r2", created=200)
    assert await store.count(first.slot) == 0
    assert await store.count(second.slot) == 1
    assert not await redis.exists(keys.corpus_progress("docs", "r2"))
    meta = await meta_of(redis, "docs")
    assert (meta["revision"], meta["created"]) == ("r2", "200")
    assert not [field for field in meta if field.startswith("build:")]
    assert await active_slot(redis, "docs") == Slot("docs", "r2", 1)


async def test_rebound_collection_forgets_old_model_event_order(redis: Redis, store: VectorStore) -> None:
    """After a rebind, the new model's first event embeds even if older than the old model's last one."""
    await load_corpus(redis, lines(("a", "t")), collection="docs", model="m1")
    await embed_fake(redis, store, "docs", model="m1", revision="r9", created=500)
    await load_corpus(redis, lines(("a", "t")), collection="docs", model="m2")
    assert await start_build(redis, "docs", model="m2", revision="r1", created=100, batch_size=2) is not None


async def test_collection_state_shows_model_active_revision_and_build_progress(
    redis: Redis, store: VectorStore
) -> None:
    """The operator's view of a collection: bound model, active revision, and batches done of a build."""
    await load_corpus(redis, lines(*((str(i), "t") for i in range(5))), collection="docs", model="m")
    await embed_fake(redis, store, "docs", model="m", revision="r1", created=100)
    build = await start_build(redis, "docs", model="m", revision="r2", created=200, batch_size=2)
    assert build is not None
    await store_batch(redis, store, build, 0, [[1.0], [1.0]])
    state = await collection_state(redis, "docs")
    assert (state.model, state.revision, state.documents, state.version) == ("m", "r1", 5, 1)
    assert state.builds == {"r2": {"version": 1, "batch_size": 2, "batches_done": 1, "batches": 3}}


async def test_batches_may_finish_in_any_order_and_a_restart_runs_only_the_missing_ones(
    redis: Redis, store: VectorStore
) -> None:
    """Batches stored out of order are all remembered; a resumed build has exactly the others left to do."""
    await load_corpus(redis, lines(*((str(i), "t") for i in range(9))), collection="docs", model="m")
    build = await start_build(redis, "docs", model="m", revision="r1", created=1, batch_size=2)
    assert build is not None and len(build.batches) == 5
    for index in (3, 0, 4):
        assert await store_batch(redis, store, build, index, [[1.0]] * len(build.batches[index]))
    assert not await commit_batch(redis, build, 3)
    again = await start_build(redis, "docs", model="m", revision="r1", created=1, batch_size=2)
    assert again is not None
    assert (again.done, again.pending) == (frozenset({0, 3, 4}), [1, 2])
    state = await collection_state(redis, "docs")
    assert state.builds["r1"]["batches_done"] == 3
    with pytest.raises(CorpusChanged, match="3 of 5 batches"):
        await complete_build(redis, store, again, created=1)
    assert await done_batches(redis, "docs", "r1") == {0, 3, 4}  # kept: the next attempt does 1 and 2


async def test_collection_names_lists_every_loaded_collection_once(redis: Redis) -> None:
    """The operator's list of collections covers every model's, sorted, without repeats after a rebind."""
    await load_corpus(redis, lines(("a", "t")), collection="zeta", model="m1")
    await load_corpus(redis, lines(("a", "t")), collection="alpha", model="m2")
    await load_corpus(redis, lines(("a", "t")), collection="zeta", model="m2")
    assert await collection_names(redis) == ["alpha", "zeta"]
