"""The CLI commands' bodies. Each opens what it needs, does one thing, and returns an exit code."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from importlib import resources
from pathlib import Path
from typing import IO, Any

import httpx
import structlog
from redis.asyncio import Redis

from runinfra_webhooks.handlers.registry import Registry
from runinfra_webhooks.service.core.audit import ChainVerifier
from runinfra_webhooks.service.core.audit_file import AuditFileError, Entry, ExportReader, ExportTrailer
from runinfra_webhooks.service.core.signature import sign
from runinfra_webhooks.service.gc_tuning import settle_after_startup
from runinfra_webhooks.service.settings import ConsoleSettings, ReceiverSettings, StoreSettings, WorkerSettings
from runinfra_webhooks.service.storage.audit_store import (
    CorruptPointer,
    audit_base,
    audit_head,
    inline_bodies,
    iter_audit_batches,
    referenced_bodies,
    resolve_bodies,
)
from runinfra_webhooks.service.storage.connection import connect
from runinfra_webhooks.service.storage.records import EventRecord, Records, ReplayRefused
from runinfra_webhooks.service.tracing import Tracing, setup_tracing

__all__ = [
    "audit_export", "audit_verify", "console", "corpus_export", "corpus_load", "corpus_search", "dead_letter_list",
    "deployments", "events_show", "list_handlers", "pause", "replay", "resume", "send", "serve", "worker",
]


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _json(obj: Any) -> None:
    print(json.dumps(obj, separators=(",", ":")), flush=True)


@asynccontextmanager
async def _redis(settings: StoreSettings) -> AsyncIterator[Redis]:
    client = connect(settings.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def _records(settings: StoreSettings, redis: Redis) -> Records:
    return Records(redis, event_retention=settings.event_retention,
                   dead_letter_retention=settings.dead_letter_retention, job_expiry_s=settings.lost_deadline)


# --- processes -----------------------------------------------------------------------------------
def serve(settings: ReceiverSettings, registry: Registry, host: str, port: int, *, workers: int = 1) -> int:
    import uvicorn

    from runinfra_webhooks.service.cli.serve_workers import receiver_for_process, serve_processes
    from runinfra_webhooks.service.logs import configure_logging

    if workers > 1:
        # Each worker process builds its own receiver and tracing, from the same environment: see
        # serve_processes. This process only supervises them.
        configure_logging(settings.log_level)
        return serve_processes(host, port, workers)
    tracing = setup_tracing("receiver", os.environ)
    configure_logging(settings.log_level, extra_processors=tracing.log_processors())
    _log_tracing(tracing)
    app, protocol = receiver_for_process(settings, registry, tracing)
    settle_after_startup()  # process-wide, so here at the process's entry rather than in the app factory
    # Every delivery is logged once by the receiver with its outcome; uvicorn's access log would repeat it.
    uvicorn.run(app, host=host, port=port, access_log=False, log_config=None, timeout_graceful_shutdown=10,
                http=protocol)
    return 0


def console(settings: ConsoleSettings, host: str, port: int, *, reindex: bool = False) -> int:
    import uvicorn

    from runinfra_webhooks.service.console.app import ConsoleNotConfigured, create_console_app
    from runinfra_webhooks.service.logs import configure_logging

    tracing = setup_tracing("console", os.environ)
    configure_logging(settings.log_level, extra_processors=tracing.log_processors())
    _log_tracing(tracing)
    try:
        app = create_console_app(settings, reindex=reindex, tracing=tracing)
    except ConsoleNotConfigured as exc:
        _err(f"runinfra-webhooks: {exc}")
        return 2
    # uvicorn's access log would print request lines only; they hold no token (it travels in headers,
    # form bodies and the URL fragment), but pages are not worth a line each.
    uvicorn.run(app, host=host, port=port, access_log=False, log_config=None, timeout_graceful_shutdown=5)
    return 0


def worker(settings: WorkerSettings, registry: Registry, *, burst: bool, metrics_port: int | None = None,
           metrics_host: str = "127.0.0.1") -> int:
    import asyncio

    import uvloop

    from runinfra_webhooks.service.logs import configure_logging
    from runinfra_webhooks.workers.settings import build_worker

    tracing = setup_tracing("worker", os.environ)
    configure_logging(settings.log_level, extra_processors=tracing.log_processors())
    _log_tracing(tracing)
    # uvloop, like the receiver (uvicorn picks it): ~20 % less CPU per job than asyncio's own loop, measured
    # with the drain bench. arq's Worker takes the current event loop when it is built.
    asyncio.set_event_loop(uvloop.new_event_loop())
    build_worker(settings, registry=registry, burst=burst, after_startup=settle_after_startup, tracing=tracing,
                 metrics_port=metrics_port, metrics_host=metrics_host).run()
    return 0


def _log_tracing(tracing: Tracing) -> None:
    import structlog

    info = tracing.describe()
    if info["tracing"] == "unavailable":
        structlog.get_logger("service.tracing").warning("tracing.unavailable", **info)
    elif tracing.enabled:
        structlog.get_logger("service.tracing").info("tracing.enabled", **info)


def send(settings: ReceiverSettings, event_type: str, *, url: str, data: str | None, event_id: str | None) -> int:
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
async def events_show(settings: StoreSettings, event_id: str) -> int:
    from runinfra_webhooks.service.storage.pause import is_paused

    async with _redis(settings) as redis:
        record = await _records(settings, redis).get(event_id)
        # Paused: its type is paused and it has not started a new attempt, so nothing of it is attempted until
        # resume (a retrying one is parked as queued when its next attempt would start).
        paused = (record is not None and record.state in ("queued", "retrying")
                  and await is_paused(redis, record.type))
    if record is None:
        _err(f"no event {event_id!r} (never received, or past its retention)")
        return 1
    _json({**record.as_json(), "paused": paused})
    return 0


async def pause(settings: StoreSettings, event_type: str | None) -> int:
    from runinfra_webhooks.service.storage.pause import EVENT_TYPE
    from runinfra_webhooks.service.storage.pause import pause as pause_type

    if event_type is not None and not EVENT_TYPE.fullmatch(event_type):
        _err(f"{event_type!r} is not an event type (dot-separated lowercase words, e.g. deployment.ready)")
        return 2
    async with _redis(settings) as redis:
        paused = await pause_type(redis, event_type)
    _json({"paused": paused})
    _err("paused: events of " + (f"type {event_type}" if event_type else "every type")
         + " are still received and acknowledged, and wait as queued until resume")
    return 0


async def resume(settings: StoreSettings, event_type: str | None) -> int:
    from runinfra_webhooks.service.storage.pause import EVENT_TYPE, paused_types
    from runinfra_webhooks.service.storage.pause import resume as resume_type

    if event_type is not None and not EVENT_TYPE.fullmatch(event_type):
        _err(f"{event_type!r} is not an event type (dot-separated lowercase words, e.g. deployment.ready)")
        return 2
    async with _redis(settings) as redis:
        requeued = await resume_type(redis, event_type, now_ms=time.time_ns() // 1_000_000,
                                     job_expiry_ms=settings.lost_deadline * 1000)
        still = await paused_types(redis)
    _json({"resumed": event_type or "*", "requeued": requeued, "paused": still})
    if "*" in still:
        _err("every type is still paused (pause --all): run resume --all to lift it")
    return 0


async def deployments(settings: StoreSettings, *, as_json: bool) -> int:
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


async def dead_letter_list(settings: StoreSettings, *, as_json: bool) -> int:
    # Paged and streamed: memory stays one page however many are parked. The JSON array is written piece by
    # piece, byte for byte what one json.dumps of the whole list would print.
    listed = 0
    async with _redis(settings) as redis:
        if as_json:
            sys.stdout.write("[")
        async for page in _records(settings, redis).dead_letter_pages():
            if as_json:
                sys.stdout.write(("," if listed else "") + ",".join(
                    json.dumps(r.as_json(), separators=(",", ":")) for r in page))
            else:
                sys.stdout.write("".join(f"{r.event_id}  {r.type}  {r.reason}  attempts={r.attempts}  "
                                         f"{_utc(r.updated_ms)}  {r.last_error}\n" for r in page))
            listed += len(page)
            sys.stdout.flush()
    if as_json:
        print("]", flush=True)
        return 0
    _err(f"{listed} dead-lettered event(s)")
    return 0


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


async def replay(settings: StoreSettings, event_id: str | None, *, all_dead: bool) -> int:
    # Each replay starts a new trace linked to the delivery's; with OTEL_* set, its root span is exported.
    tracing = setup_tracing("cli", os.environ)
    try:
        return await _replay(settings, event_id, all_dead=all_dead, tracing=tracing)
    finally:
        tracing.shutdown()


async def _replay(settings: StoreSettings, event_id: str | None, *, all_dead: bool, tracing: Tracing) -> int:
    async with _redis(settings) as redis:
        records = _records(settings, redis)

        async def replay_one(record_id: str, first: EventRecord | None) -> int:
            traceparent = ""  # refused below, unless a race made it dead-lettered: then a fresh trace
            if first is not None and first.state == "dead_lettered":
                traceparent = tracing.replay_traceparent(first.traceparent, record_id)
            return await records.replay(record_id, time.time_ns() // 1_000_000, traceparent)

        if not all_dead:
            assert event_id is not None
            try:
                generation = await replay_one(event_id, await records.get(event_id))
            except ReplayRefused as exc:
                _err(str(exc))
                return 1
            _json({"event_id": event_id, "status": "queued", "generation": generation})
            return 0
        # In pages, each page's replays sent together (one round trip). Every replay is one atomic script
        # that moves its event out of the dead-letter set, so a crash anywhere leaves each event replayed or
        # still dead-lettered; the pages' score cursor (Records.dead_letter_pages) never yields one twice.
        total, upper = await records.dead_letter_snapshot()
        done = failed = 0
        if upper is not None:
            async for page in records.dead_letter_pages(upper=upper):
                outcomes = await asyncio.gather(*(replay_one(r.event_id, r) for r in page), return_exceptions=True)
                lines = []
                for r, outcome in zip(page, outcomes, strict=True):
                    if isinstance(outcome, ReplayRefused):
                        failed += 1
                    elif isinstance(outcome, BaseException):
                        raise outcome
                    else:
                        lines.append(json.dumps({"event_id": r.event_id, "status": "queued", "generation": outcome},
                                                separators=(",", ":")) + "\n")
                sys.stdout.write("".join(lines))
                sys.stdout.flush()
                done += len(page)
                _err(f"replayed {done}/{max(total, done)}")
        _err(f"{done - failed} replayed, {failed} no longer dead-lettered")
        return 0


def list_handlers(registry: Registry, *, as_json: bool) -> int:
    rows = registry.as_json()
    if as_json:
        _json(rows)
        return 0
    for row in rows:
        model = f"  model={row['model']}" if row["model"] else ""
        print(f"{row['type']}  {row['handler']}  ({row['origin']}){model}")
    if not rows:
        _err("no handlers registered (RUNINFRA_BUILTIN_REACTIONS is empty and no module adds any)")
    return 0


# --- corpus --------------------------------------------------------------------------------------
@asynccontextmanager
async def _vector_store(settings: StoreSettings, redis: Redis) -> AsyncIterator[Any]:
    from runinfra_webhooks.service.storage.vectors import open_vector_store

    key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key is not None else None
    async with open_vector_store(settings.vector_store, redis, qdrant_api_key=key,
                                 lock_wait=settings.qdrant_lock_wait, timeout=settings.qdrant_timeout) as store:
        yield store


async def corpus_load(settings: StoreSettings, file: str, collection: str, model: str) -> int:
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


async def corpus_export(settings: StoreSettings, collection: str) -> int:
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


async def corpus_search(settings: WorkerSettings, text: str, collection: str, k: int) -> int:
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


def _read_export(path: Path, check: Callable[[Entry], None]) -> ExportReader:
    """Read an export or archive file, passing each entry to ``check`` as it is read; AuditFileError /
    OSError name what is wrong. The file is read to the end whatever ``check`` finds: a bad line or a cut
    is reported before a problem in an entry."""
    with path.open(encoding="utf-8") as f:
        reader = ExportReader(f)
        for entry in reader:
            check(entry)
    return reader


async def audit_export(settings: ReceiverSettings, out: str | None) -> int:
    from runinfra_webhooks.service.core.audit import entry_as_json

    async with _redis(settings) as redis:
        try:
            # Base and head first: entries received during the export (after the head) are left out, so the
            # file ends exactly at the head its trailer names.
            base_seq, base_hash = await audit_base(redis)
            head_seq, head_hash = await audit_head(redis)
        except CorruptPointer as exc:
            _err(f"audit export: {exc}")
            return 1
        count = 0
        with _output(out) as f:
            # One XRANGE batch at a time, its referenced bodies inlined: the log is never held whole.
            async with aclosing(iter_audit_batches(redis, read_ahead=True)) as batches:
                async for batch in batches:
                    kept = [e for e in batch
                            if not (e[1].get(b"seq", b"").isdigit() and int(e[1][b"seq"]) > head_seq)]
                    bodies = await resolve_bodies(redis, referenced_bodies(kept))
                    for stream_id, fields in inline_bodies(kept, bodies):
                        f.write(json.dumps(entry_as_json(stream_id, fields)) + "\n")
                        count += 1
                        if count % 10_000 == 0:
                            _err(f"exported {count} entries")
                    if len(kept) < len(batch):
                        break  # past the head: what follows was received during the export
            trailer = ExportTrailer(count=count, base_seq=base_seq, base_hash=base_hash, head_seq=head_seq,
                                    head_hash=head_hash, exported_ms=time.time_ns() // 1_000_000)
            secrets = settings.secret_values()
            if secrets:
                trailer = trailer.signed(secrets[0])
            f.write(trailer.as_line() + "\n")
    # The head is the anchor: keep it somewhere else, and a later rewrite of the chain is detectable.
    _err(json.dumps({"exported": count, "head_seq": head_seq, "head_hash": head_hash}))
    return 0


def _check_cut(reader: ExportReader, secrets: tuple[bytes, ...], *, archive: bool = False) -> str | None:
    """Why an export (or archive) file is not whole, or None."""
    trailer = reader.trailer
    if trailer is None:
        return "no export trailer: the file was cut at the end (or written by an older version)"
    if trailer.mac and not trailer.authentic(secrets):
        return "the export trailer's MAC does not verify with the configured secrets"
    if not trailer.mac and not archive:
        _err("note: the trailer carries no MAC (an archive written by a worker): compare its head with an anchor")
    if trailer.count != reader.count:
        return f"the trailer counts {trailer.count} entries, the file holds {reader.count}"
    if reader.first is None or reader.last is None:
        return None if trailer.head_seq == trailer.base_seq else "no entries, but the trailer names a head"
    first, last = reader.first[1], reader.last[1]
    if first.get(b"seq") != str(trailer.base_seq + 1).encode() or first.get(b"prev") != trailer.base_hash.encode():
        return f"the first entry does not follow the base (seq {trailer.base_seq}): the file was cut at the start"
    if last.get(b"seq") != str(trailer.head_seq).encode() or last.get(b"hash") != trailer.head_hash.encode():
        return f"the last entry is not the head (seq {trailer.head_seq}): the file was cut at the end"
    return None


async def audit_verify(settings: ReceiverSettings, file: str | None, anchor: str | None, archive: str | None = None
                       ) -> int:
    secrets = settings.secret_values()
    head: tuple[int, str] | None = None
    # Entries are checked as they are read (files, then Redis batch by batch) and never held. A problem in an
    # entry is reported only after the checks that rank before it (bad lines, cuts, the pointers in Redis,
    # the archive's base), wherever in the log those are: the answer does not depend on the reading order.
    verifier: ChainVerifier | None = None
    started = False
    archived_first: Entry | None = None
    archived_last: Entry | None = None

    def start(base_seq: int, base_hash: str) -> ChainVerifier:
        return ChainVerifier(secrets=secrets, tolerance=settings.tolerance, base_seq=base_seq, base_hash=base_hash,
                             anchor=anchor)

    def check(entry: Entry) -> None:
        # A file's base is its first entry's (its trailer comes last; the cut check then holds the two equal).
        nonlocal verifier, started
        if not started:
            started = True
            seq = entry[1].get(b"seq", b"")
            if seq.isdigit():
                verifier = start(int(seq) - 1, entry[1].get(b"prev", b"").decode())
        if verifier is not None:
            verifier.feed(*entry)

    try:
        if file is not None:
            reader = _read_export(Path(file), check)
            cut = _check_cut(reader, secrets)
            if cut is not None:
                _err(f"{file}: export_cut: {cut}")
                return 1
            assert reader.trailer is not None
            base_seq, base_hash = reader.trailer.base_seq, reader.trailer.base_hash
        else:
            if archive is not None:
                files = sorted(Path(archive).glob("audit-*.jsonl"))
                if not files:
                    _err(f"{archive}: no audit archive files (audit-*.jsonl)")
                    return 1
                for path in files:
                    reader = _read_export(path, check)
                    cut = _check_cut(reader, secrets, archive=True)
                    if cut is not None:
                        _err(f"{path}: export_cut: {cut}")
                        return 1
                    archived_first = archived_first or reader.first
                    archived_last = reader.last or archived_last
            async with _redis(settings) as redis:
                base_seq, base_hash = await audit_base(redis)
                if not started:
                    started, verifier = True, start(base_seq, base_hash)
                async with aclosing(iter_audit_batches(redis, read_ahead=True)) as batches:
                    async for batch in batches:
                        if verifier is None or verifier.problem is not None:
                            break  # the outcome is decided: the rest of the log cannot change it
                        # Duplicates keep their body once, by digest: resolved per batch, for this batch only.
                        bodies = (await resolve_bodies(redis, referenced_bodies(batch))).get
                        for stream_id, fields in batch:
                            if verifier.feed(stream_id, fields, bodies) is not None:
                                break
                head = await audit_head(redis)
    except FileNotFoundError as exc:
        _err(f"cannot read {exc.filename}: no such file")
        return 1
    except (OSError, UnicodeDecodeError) as exc:
        _err(f"cannot read {file or archive}: {exc}")
        return 1
    except (AuditFileError, CorruptPointer) as exc:
        _err(f"{file or archive or 'audit'}: malformed_entry: {exc}")
        return 1
    if archived_first is not None and archived_last is not None:
        # The archive and Redis must be one chain, and Redis's base must be the last archived entry: a base
        # moved past entries that were never archived (trimmed by hand) is caught here.
        last_archived = archived_last[1]
        if (str(base_seq).encode(), base_hash.encode()) != (last_archived.get(b"seq"), last_archived.get(b"hash")):
            _err(f"base_mismatch: Redis's audit base (seq {base_seq}) is not the last archived entry "
                 f"(seq {last_archived.get(b'seq', b'?').decode()}): entries were removed without being archived")
            return 1
        first = archived_first[1]
        first_seq = first.get(b"seq", b"")
        if not first_seq.isdigit():
            _err("malformed_entry: the first archived entry has no decimal seq")
            return 1
        base_seq, base_hash = int(first_seq) - 1, first.get(b"prev", b"").decode()
        if base_seq != 0:
            _err(f"note: the archive starts at seq {base_seq + 1}; older entries are not checked")
    # No verifier only when there were no entries (a file whose first seq is not a number fails its cut check).
    checked, problem = (verifier.checked, verifier.problem) if verifier is not None else (0, None)
    if problem is not None:
        _err(f"audit entry seq={problem.seq} id={problem.stream_id}: {problem.code}: {problem.detail}")
        _err(f"{checked} entries verified before it")
        return 1
    last = verifier.last if verifier is not None else (base_seq, base_hash)
    if head is not None and last != head:
        _err(f"head_mismatch: the newest entry (seq {last[0]}) is not the recorded head (seq {head[0]}): entries "
             "were removed at the end")
        return 1
    anchored = verifier.anchor_seen if verifier is not None else anchor == base_hash
    if anchor is not None and not anchored:
        _err(f"anchor {anchor} is not in the chain: the log was rewritten or trimmed past it")
        return 1
    _err(f"audit log ok: {checked} entries, signatures, MACs and chain verified")
    return 0
