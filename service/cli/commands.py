"""The CLI commands' bodies. Each opens what it needs, does one thing, and returns an exit code."""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from pathlib import Path
from typing import IO, Any

import httpx
import structlog
from redis.asyncio import Redis
from runinfra_webhooks.service.core.audit import verify_entries
from runinfra_webhooks.service.core.signature import sign
from runinfra_webhooks.service.gc_tuning import settle_after_startup
from runinfra_webhooks.service.settings import Settings
from runinfra_webhooks.service.storage.audit_store import audit_base, audit_head, iter_audit
from runinfra_webhooks.service.storage.connection import connect
from runinfra_webhooks.service.storage.records import Records, ReplayRefused

__all__ = [
    "audit_export", "audit_verify", "corpus_export", "corpus_load", "corpus_search", "dead_letter_list", "deployments",
    "events_show", "replay", "send", "serve", "worker",
]


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _json(obj: Any) -> None:
    print(json.dumps(obj, separators=(",", ":")), flush=True)


@asynccontextmanager
async def _redis(settings: Settings) -> AsyncIterator[Redis]:
    client = connect(settings.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def _records(settings: Settings, redis: Redis) -> Records:
    return Records(redis, event_retention=settings.event_retention,
                   dead_letter_retention=settings.dead_letter_retention, job_expiry_s=settings.lost_deadline)


# --- processes -----------------------------------------------------------------------------------
def serve(settings: Settings, host: str, port: int) -> int:
    import uvicorn
    from runinfra_webhooks.service.logs import configure_logging
    from runinfra_webhooks.service.receiver.app import create_app

    configure_logging(settings.log_level)
    app = create_app(settings)
    settle_after_startup()  # process-wide, so here at the process's entry rather than in the app factory
    # Every delivery is logged once by the receiver with its outcome; uvicorn's access log would repeat it.
    uvicorn.run(app, host=host, port=port, access_log=False, log_config=None, timeout_graceful_shutdown=10)
    return 0


def worker(settings: Settings, *, burst: bool) -> int:
    import asyncio

    import uvloop
    from runinfra_webhooks.service.logs import configure_logging
    from runinfra_webhooks.workers.settings import build_worker

    configure_logging(settings.log_level)
    # uvloop, like the receiver (uvicorn picks it): ~20 % less CPU per job than asyncio's own loop, measured
    # with the drain bench. arq's Worker takes the current event loop when it is built.
    asyncio.set_event_loop(uvloop.new_event_loop())
    build_worker(settings, burst=burst, after_startup=settle_after_startup).run()
    return 0


def send(settings: Settings, event_type: str, *, url: str, data: str | None, event_id: str | None) -> int:
    example = resources.files("runinfra_webhooks.service.devtools").joinpath(f"examples/{event_type}.json")
    event = json.loads(example.read_text())
    event["id"] = event_id or f"evt_{uuid.uuid4().hex[:20]}"
    event["created"] = int(time.time())
    if data:
        try:
            extra = json.loads(data)
        except json.JSONDecodeError as exc:
            _err(f"--data is not JSON: {exc}")
            return 2
        if not isinstance(extra, dict):
            _err("--data must be a JSON object")
            return 2
        event["data"].update(extra)
    body = json.dumps(event).encode()
    secret = settings.webhook_secrets[0].get_secret_value()
    headers = {"content-type": "application/json", "runinfra-signature": sign(body, secret, int(time.time()))}
    try:
        resp = httpx.post(url, content=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        _err(f"could not reach {url}: {type(exc).__name__}")
        return 1
    try:
        answer: Any = resp.json()
    except ValueError:
        answer = resp.text
    _json({"status_code": resp.status_code, "event_id": event["id"], "response": answer})
    return 0 if resp.is_success else 1


# --- state ---------------------------------------------------------------------------------------
async def events_show(settings: Settings, event_id: str) -> int:
    async with _redis(settings) as redis:
        record = await _records(settings, redis).get(event_id)
    if record is None:
        _err(f"no event {event_id!r} (never received, or past its retention)")
        return 1
    _json(record.as_json())
    return 0


async def deployments(settings: Settings, *, as_json: bool) -> int:
    from runinfra_webhooks.handlers.deployments import list_deployments

    async with _redis(settings) as redis:
        rows = await list_deployments(redis)
    if as_json:
        _json(rows)
        return 0
    cols = ("deployment_id", "status", "model", "modality", "revision", "pipeline_id", "updated", "last_event_id")
    table = [cols, *[tuple(str(r.get(c, "")) for c in cols) for r in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        _err("no deployments yet")
    return 0


async def dead_letter_list(settings: Settings, *, as_json: bool) -> int:
    async with _redis(settings) as redis:
        parked = await _records(settings, redis).dead_letters()
    if as_json:
        _json([r.as_json() for r in parked])
        return 0
    for r in parked:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.updated_ms / 1000))
        print(f"{r.event_id}  {r.type}  {r.reason}  attempts={r.attempts}  {when}  {r.last_error}")
    _err(f"{len(parked)} dead-lettered event(s)")
    return 0


async def replay(settings: Settings, event_id: str | None, *, all_dead: bool) -> int:
    async with _redis(settings) as redis:
        records = _records(settings, redis)
        if not all_dead:
            assert event_id is not None
            try:
                generation = await records.replay(event_id, time.time_ns() // 1_000_000)
            except ReplayRefused as exc:
                _err(str(exc))
                return 1
            _json({"event_id": event_id, "status": "queued", "generation": generation})
            return 0
        parked = await records.dead_letters()
        failed = 0
        for i, r in enumerate(parked, 1):
            try:
                generation = await records.replay(r.event_id, time.time_ns() // 1_000_000)
                _json({"event_id": r.event_id, "status": "queued", "generation": generation})
            except ReplayRefused:
                failed += 1
            _err(f"replayed {i}/{len(parked)}")
        _err(f"{len(parked) - failed} replayed, {failed} no longer dead-lettered")
        return 0


# --- corpus --------------------------------------------------------------------------------------
@asynccontextmanager
async def _vector_store(settings: Settings, redis: Redis) -> AsyncIterator[Any]:
    from runinfra_webhooks.service.storage.vectors import open_vector_store

    key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key is not None else None
    async with open_vector_store(settings.vector_store, redis, qdrant_api_key=key,
                                 lock_wait=settings.qdrant_lock_wait, timeout=settings.qdrant_timeout) as store:
        yield store


async def corpus_load(settings: Settings, file: str, collection: str, model: str) -> int:
    from runinfra_webhooks.handlers.corpus import CorpusError, load_corpus
    from runinfra_webhooks.service.storage.vectors import VectorStoreError

    try:
        lines = Path(file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        _err(f"cannot read {file}: {exc}")
        return 1
    async with _redis(settings) as redis:
        try:
            count = await load_corpus(redis, lines, collection=collection, model=model)
        except CorpusError as exc:
            _err(f"{file}: {exc}")
            return 1
        _err(f"loaded {count} document(s) into {collection!r} bound to model {model!r}")
        # The old vectors are stale now (nothing reads them again); dropping them is housekeeping that the
        # next flip also does, so a store that cannot be reached now does not fail the load.
        try:
            async with _vector_store(settings, redis) as store:
                await store.prune(collection, keep=())
        except VectorStoreError as exc:
            _err(f"note: the previous vectors stay until the next re-embedding ({exc})")
    return 0


async def corpus_export(settings: Settings, collection: str) -> int:
    from runinfra_webhooks.handlers.corpus import CorpusError, export_corpus
    from runinfra_webhooks.service.storage.vectors import VectorStoreError

    async with _redis(settings) as redis:
        try:
            async with _vector_store(settings, redis) as store:
                async for row in export_corpus(redis, store, collection):
                    _json(row)
        except (CorpusError, VectorStoreError) as exc:
            _err(str(exc))
            return 1
    return 0


async def corpus_search(settings: Settings, text: str, collection: str, k: int) -> int:
    """Embed ``text`` with the collection's model through the gateway; the ``k`` nearest documents."""
    from runinfra_webhooks.handlers.corpus import CorpusError, search_corpus
    from runinfra_webhooks.handlers.embeddings import ROUTE, parse_embeddings
    from runinfra_webhooks.handlers.errors import PermanentError
    from runinfra_webhooks.service.gateway.client import GatewayClient, GatewayError, idempotency_key
    from runinfra_webhooks.service.storage.vectors import VectorStoreError

    if k < 1:
        _err(f"-k must be >= 1, got {k}")
        return 2
    if not text.strip():
        _err("TEXT must not be empty")
        return 2
    if settings.api_key is None:
        _err("RUNINFRA_API_KEY is not set: the query is embedded through the gateway")
        return 1
    # stdout carries the hits as JSON lines: the gateway client's call log goes to stderr, warnings only.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr),
                        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    gateway = GatewayClient.from_settings(settings)

    async def embed(model: str) -> list[float]:
        # Every search is its own logical call: a new key, reused only by the client's own retries.
        key = idempotency_key(f"search-{uuid.uuid4()}", "search", 0, 0)
        response = await gateway.post(ROUTE, {"model": model, "input": [text]}, idempotency_key=key)
        return parse_embeddings(response.json(), 1)[0]

    try:
        async with _redis(settings) as redis, _vector_store(settings, redis) as store:
            hits = await search_corpus(redis, store, collection, embed, text, k=k)
    except (CorpusError, VectorStoreError, GatewayError, PermanentError) as exc:
        _err(str(exc))
        return 1
    finally:
        await gateway.aclose()
    for hit in hits:
        _json({"id": hit.id, "score": round(hit.score, 6)})
    return 0


# --- audit ---------------------------------------------------------------------------------------
@contextmanager
def _output(path: str | None) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        return
    with open(path, "w", encoding="utf-8") as f:
        yield f


async def audit_export(settings: Settings, out: str | None) -> int:
    from runinfra_webhooks.service.core.audit import entry_as_json

    count = 0
    async with _redis(settings) as redis:
        with _output(out) as f:
            async for stream_id, fields in iter_audit(redis):
                f.write(json.dumps(entry_as_json(stream_id, fields)) + "\n")
                count += 1
                if count % 10_000 == 0:
                    _err(f"exported {count} entries")
        seq, head = await audit_head(redis)
    # The head is the anchor: keep it somewhere else, and a later rewrite of the chain is detectable.
    _err(json.dumps({"exported": count, "head_seq": seq, "head_hash": head}))
    return 0


def _from_export_line(line: str) -> tuple[str, dict[bytes, bytes]]:
    obj = json.loads(line)
    stream_id = obj.pop("stream_id")
    fields: dict[bytes, bytes] = {}
    for name, value in obj.items():
        if name.endswith("_hex"):
            fields[name[:-4].encode()] = bytes.fromhex(value)
        else:
            fields[name.encode()] = str(value).encode()
    return stream_id, fields


async def audit_verify(settings: Settings, file: str | None, anchor: str | None) -> int:
    head: tuple[int, str] | None = None  # an exported file carries no head to check against
    if file is not None:
        with open(file, encoding="utf-8") as f:
            entries = [_from_export_line(line) for line in f if line.strip()]
        base_seq = int(entries[0][1][b"seq"]) - 1 if entries else 0
        base_hash = entries[0][1][b"prev"].decode() if entries else ""
    else:
        async with _redis(settings) as redis:
            base_seq, base_hash = await audit_base(redis)
            entries = [e async for e in iter_audit(redis)]
            head = await audit_head(redis)
    checked, problem = verify_entries(entries, secrets=settings.secret_values(), tolerance=settings.tolerance,
                                      base_seq=base_seq, base_hash=base_hash)
    last = (int(entries[-1][1][b"seq"]), entries[-1][1][b"hash"].decode()) if entries else (base_seq, base_hash)
    if problem is None and head is not None and last != head:
        _err(f"the newest entry (seq {last[0]}) is not the recorded head (seq {head[0]}): entries were removed "
             "at the end")
        return 1
    hashes = {e[1][b"hash"].decode() for e in entries} | {base_hash}
    if problem is not None:
        _err(f"audit entry seq={problem.seq} id={problem.stream_id}: {problem.code}: {problem.detail}")
        _err(f"{checked} entries verified before it")
        return 1
    if anchor is not None and anchor not in hashes:
        _err(f"anchor {anchor} is not in the chain: the log was rewritten or trimmed past it")
        return 1
    _err(f"audit log ok: {checked} entries, signatures and chain verified")
    return 0
