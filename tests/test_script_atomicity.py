"""Every Lua script of the project writes everything or nothing, fed the worst values the models allow.

Each script is run against a real Redis with extreme but valid input (it must write all it should) and with
corrupt stored fields or bad arguments (it must refuse with an error naming it and leave every key as it
was). Then the error is sorted: a script's refusal is permanent, Redis being full or busy is transient.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from runinfra_webhooks.handlers.deployments import APPLY_SCRIPT
from runinfra_webhooks.service.core.events import MAX_CREATED
from runinfra_webhooks.service.core.trace_context import new_traceparent
from runinfra_webhooks.service.storage import arq_job, keys, records
from runinfra_webhooks.service.storage.audit_store import TRIM_SCRIPT
from runinfra_webhooks.service.storage.ingest import _SCRIPT as INGEST_SCRIPT
from runinfra_webhooks.service.storage.ingest import Delivery, Ingestor, IngestOutcome
from runinfra_webhooks.service.storage.redis_errors import classify
from runinfra_webhooks.workers.retry import SCRIPT_NAMES, decide
from runinfra_webhooks.workers.settings import build_worker
from tests.builders import SECRET, example_event
from tests.conftest import make_settings
from tests.redis_server import Db, as_async_db

LONG_ID = "~" * 255  # the longest event id the envelope allows
LONG_TYPE = "a." + "b" * 253  # the longest type
BIG_BODY = b"{" + b"x" * (1_048_576 - 2) + b"}"  # at the body limit
HEADER = b"t=999999999999,v1=" + b"f" * 64 + b",v1=" + b"e" * 8000  # a long signature header


def snapshot(db: Db) -> dict[bytes, Any]:
    """Every key's content (not DUMP: a large hash's field order is not stable)."""
    read: dict[bytes, Callable[[bytes], object]] = {
        b"string": db.get, b"hash": db.hgetall, b"list": lambda k: db.lrange(k, 0, -1), b"set": db.smembers,
        b"zset": lambda k: db.zrange(k, 0, -1, withscores=True), b"stream": db.xrange,
    }
    return {k: (db.type(k), read[db.type(k)](k)) for k in sorted(db.keys("*"))}


def refuses_and_writes_nothing(db: Db, script: str, numkeys: int, *args: Any, name: str) -> None:
    before = snapshot(db)
    with pytest.raises(ResponseError) as caught:
        db.eval(script, numkeys, *args)
    assert snapshot(db) == before, f"{name} wrote before failing"
    failure = classify(caught.value, SCRIPT_NAMES)
    assert failure is not None and not failure.transient
    assert failure.code == f"script_error:{name}", failure


def ingest_args() -> list[Any]:
    delivery = Delivery(wanted=IngestOutcome.QUEUED, event_id=LONG_ID, type=LONG_TYPE, created=MAX_CREATED,
                        header=HEADER, body=BIG_BODY, request_id="r" * 128, secret_index=1,
                        received_ms=time.time_ns() // 1_000_000)
    ingestor = Ingestor(Redis(), dedup_ttl=604_800, event_retention=604_800, dead_letter_retention=2_592_000,
                        job_expiry_s=86_400, secrets=(SECRET.encode(), b"old"))
    return list(ingestor._args(delivery))


# --- ingest ---------------------------------------------------------------------------------------------
INGEST_KEYS = 10  # the script's KEYS; its ARGV follow them in ingest_args()


@pytest.mark.parametrize("wanted", ["queued", "ignored", "dead_lettered", "invalid_json", "invalid_event"])
def test_ingest_writes_everything_for_the_largest_valid_delivery(db: Db, wanted: str) -> None:
    """Longest id and type, largest created, a 1 MiB body: the record, job and audit entry are all written."""
    args = ingest_args()
    args[INGEST_KEYS] = wanted  # ARGV 1
    assert db.eval(INGEST_SCRIPT, INGEST_KEYS, *args) == wanted.encode()
    [(_, entry)] = db.xrange(keys.AUDIT_STREAM)
    assert entry[b"seq"] == b"1" and entry[b"body"] == BIG_BODY and entry[b"outcome"] == wanted.encode()
    assert db.hget(keys.AUDIT_HEAD, "seq") == b"1"
    if wanted in ("queued", "ignored", "dead_lettered"):
        assert db.hget(keys.event(LONG_ID), "created") == str(MAX_CREATED).encode()
        assert db.exists(keys.dedup(LONG_ID))
    if wanted == "queued":
        assert db.exists(keys.ARQ_JOB + keys.job_id(LONG_ID, 0)) and db.zcard(keys.ARQ_QUEUE) == 1


def test_ingest_duplicate_at_the_largest_head_seq_is_exact(db: Db) -> None:
    """A head seq of 12 digits is added to exactly (no exponent, no rounding)."""
    db.hset(keys.AUDIT_HEAD, mapping={"seq": "999999999998", "hash": "a" * 40})
    assert db.eval(INGEST_SCRIPT, INGEST_KEYS, *ingest_args()) == b"queued"
    assert db.hget(keys.AUDIT_HEAD, "seq") == b"999999999999"


@pytest.mark.parametrize(("key", "field", "value"), [
    (keys.AUDIT_HEAD, "seq", "abc"),
    (keys.AUDIT_HEAD, "seq", "9999999999999"),  # 13 digits: past what the script adds to exactly
    (keys.AUDIT_HEAD, "hash", "not-a-sha1"),
], ids=["seq-abc", "seq-13-digits", "hash-garbage"])
def test_ingest_refuses_a_corrupt_audit_head_and_writes_nothing(
    db: Db, key: str, field: str, value: str
) -> None:
    """A corrupt head: an error naming the script, and not one key changed (no dedup mark, no job)."""
    db.hset(key, field, value)
    refuses_and_writes_nothing(db, INGEST_SCRIPT, INGEST_KEYS, *ingest_args(), name="ingest")


@pytest.mark.parametrize(("argv", "value"), [(1, "accepted"), (3, "0"), (4, "x"), (11, "1e3")],
                         ids=["unknown-outcome", "zero-ttl", "bad-now", "bad-created"])
def test_ingest_refuses_bad_arguments_and_writes_nothing(db: Db, argv: int, value: str) -> None:
    """Bad arguments are refused before any write."""
    args = ingest_args()
    args[INGEST_KEYS + argv - 1] = value
    refuses_and_writes_nothing(db, INGEST_SCRIPT, INGEST_KEYS, *args, name="ingest")


# --- records --------------------------------------------------------------------------------------------
def _event_record(db: Db, **fields: str) -> str:
    key = keys.event(LONG_ID)
    db.hset(key, mapping={"id": LONG_ID, "state": "queued", "generation": "0", "attempts": "0", "body": "{}",
                          **fields})
    return key


def test_start_counts_attempts_exactly_at_the_largest_counter(db: Db) -> None:
    """attempts 999999999999 becomes 1000000000000, written with the state and the in-flight mark."""
    key = _event_record(db, attempts="999999999999")
    now = time.time_ns() // 1_000_000
    reply = db.eval(records.START_SCRIPT, 5, key, keys.INFLIGHT, keys.PAUSED_TYPES, keys.PARKED,
                   keys.CONSOLE_INDEX, "0", now, LONG_ID)
    assert isinstance(reply, list)
    assert db.hget(key, "attempts") == b"1000000000000" and db.hget(key, "state") == b"processing"
    assert db.zscore(keys.INFLIGHT, LONG_ID) == now


@pytest.mark.parametrize("attempts", ["abc", "1.5", "-1", "9" * 13])
def test_start_refuses_corrupt_attempts_and_writes_nothing(db: Db, attempts: str) -> None:
    """Before, HINCRBY failed after the state was already set to processing."""
    key = _event_record(db, attempts=attempts)
    refuses_and_writes_nothing(db, records.START_SCRIPT, 5, key, keys.INFLIGHT, keys.PAUSED_TYPES, keys.PARKED,
                               keys.CONSOLE_INDEX, "0", time.time_ns() // 1_000_000, LONG_ID, name="records.start")


@pytest.mark.parametrize(("index", "value"), [(1, "x"), (6, "-5"), (3, "exploded")],
                         ids=["bad-now", "bad-ttl", "unknown-state"])
def test_finish_refuses_bad_arguments_and_writes_nothing(db: Db, index: int, value: str) -> None:
    """A bad now, ttl or target state: nothing written."""
    key = _event_record(db, state="processing")
    args = ["0", str(time.time_ns() // 1_000_000), LONG_ID, "succeeded", "", "", "604800", "0", "0"]
    args[index] = value
    refuses_and_writes_nothing(db, records.FINISH_SCRIPT, 4, key, keys.INFLIGHT, keys.DEAD_LETTERS, keys.CONSOLE_INDEX,
                               *args,
                               name="records.finish")


@pytest.mark.parametrize("stored", ["{", '"a string"', '[1, 2]'])
def test_add_request_id_refuses_a_corrupt_list_and_writes_nothing(db: Db, stored: str) -> None:
    """A stored gateway_request_ids that is not a JSON list of strings stays as it was."""
    key = _event_record(db, gateway_request_ids=stored)
    refuses_and_writes_nothing(db, records.ADD_REQUEST_ID_SCRIPT, 1, key, "req_" + "x" * 200,
                               name="records.add_request_id")


def _replay_args(key: str) -> tuple[Any, ...]:
    """KEYS and ARGV of the replay script, as ``Records.replay`` passes them."""
    now = time.time_ns() // 1_000_000
    return (key, keys.INFLIGHT, keys.DEAD_LETTERS, keys.ARQ_QUEUE, keys.ARQ_JOB, keys.CONSOLE_INDEX, LONG_ID, now,
            86_400_000,
            *arq_job.payload_around_generation(LONG_ID, now), new_traceparent())


def _replay(db: Db, key: str) -> Any:
    return db.eval(records._REPLAY, 6, *_replay_args(key))


def test_replay_bumps_the_largest_generation_exactly(db: Db) -> None:
    """generation 999999999998 becomes 999999999999, in the record, the job id and the job."""
    key = _event_record(db, state="dead_lettered", generation="999999999998")
    db.zadd(keys.DEAD_LETTERS, {LONG_ID: 1})
    assert _replay(db, key) == 999_999_999_999
    job_id = f"{LONG_ID}@999999999999"
    job = json.loads(db.get(keys.ARQ_JOB + job_id) or b"{}")
    assert job["a"] == [LONG_ID, 999_999_999_999]
    assert db.hget(key, "generation") == b"999999999999" and db.zscore(keys.ARQ_QUEUE, job_id) is not None
    assert db.zscore(keys.DEAD_LETTERS, LONG_ID) is None


def test_replay_refuses_a_corrupt_generation_and_writes_nothing(db: Db) -> None:
    """Before, HINCRBY failed first; now the check comes before any write, whatever the field holds."""
    key = _event_record(db, state="dead_lettered", generation="x")
    db.zadd(keys.DEAD_LETTERS, {LONG_ID: 1})
    refuses_and_writes_nothing(db, records._REPLAY, 6, *_replay_args(key), name="records.replay")


def test_requeue_refuses_a_bad_expiry_and_writes_nothing(db: Db) -> None:
    """A zero job expiry is refused before the job is written."""
    key = _event_record(db)
    job_id = keys.job_id(LONG_ID, 0)
    refuses_and_writes_nothing(db, records._REQUEUE, 6, key, keys.ARQ_JOB + job_id, keys.ARQ_QUEUE,
                               keys.ARQ_IN_PROGRESS + job_id, keys.INFLIGHT, keys.CONSOLE_INDEX, LONG_ID, "0",
                               time.time_ns() // 1_000_000, "0", "{}", job_id, name="records.requeue")


# --- deployment registry --------------------------------------------------------------------------------
DEPLOYMENT = "dep_" + "é" * 2000  # the model puts no bound on ids


def _apply(db: Db, created: int | str, event_id: str, status: str) -> Any:
    history = json.dumps({"event_id": event_id, "type": "deployment.updated", "created": created})
    return db.eval(APPLY_SCRIPT, 3, keys.deployment(DEPLOYMENT), keys.deployment_history(DEPLOYMENT),
                   keys.DEPLOYMENTS, created, event_id, history, "deployment_id", DEPLOYMENT, "status", status)


def test_registry_compares_created_exactly_beyond_double_precision(db: Db) -> None:
    """2**53 + 1 then 2**53: the older one does not apply (as doubles they are equal and it did)."""
    assert _apply(db, 2**53 + 1, "evt_b", "ready") == 1
    assert _apply(db, 2**53, "evt_c", "failed") == 0
    assert db.hget(keys.deployment(DEPLOYMENT), "status") == b"ready"
    assert db.hget(keys.deployment(DEPLOYMENT), "updated") == str(2**53 + 1).encode()
    history = [json.loads(h) for h in db.lrange(keys.deployment_history(DEPLOYMENT), 0, -1)]
    assert [h["applied"] for h in history] == [False, True]


def test_registry_applies_the_largest_created_and_then_refuses_older(db: Db) -> None:
    """MAX_CREATED applies, is stored as written, and an older event is recorded but not applied."""
    assert _apply(db, MAX_CREATED, "evt_a", "ready") == 1
    assert _apply(db, MAX_CREATED - 1, "evt_b", "failed") == 0
    assert db.hget(keys.deployment(DEPLOYMENT), "updated") == str(MAX_CREATED).encode()
    assert db.sismember(keys.DEPLOYMENTS, DEPLOYMENT)


@pytest.mark.parametrize(("created", "stored"), [("1e3", None), (str(10**4300 - 1)[:5] + "x", None), ("5", "abc")],
                         ids=["exponent-created", "garbage-created", "corrupt-stored-updated"])
def test_registry_refuses_bad_created_and_writes_nothing(
    db: Db, created: str, stored: str | None
) -> None:
    """A created that is not a decimal integer, or a corrupt stored one: an error, no HSET, no history."""
    if stored is not None:
        db.hset(keys.deployment(DEPLOYMENT), "updated", stored)
    history = json.dumps({"event_id": "evt_x", "type": "deployment.created", "created": 1})
    refuses_and_writes_nothing(db, APPLY_SCRIPT, 3, keys.deployment(DEPLOYMENT), keys.deployment_history(DEPLOYMENT),
                               keys.DEPLOYMENTS, created, "evt_x", history, "deployment_id", DEPLOYMENT, "status",
                               "ready", name="deployments.apply")


# --- audit trim -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [("abc", "1", "a" * 40), ("1-0", "x", "a" * 40), ("1-0", "1", "zz")],
                         ids=["bad-id", "bad-seq", "bad-hash"])
def test_trim_refuses_bad_arguments_and_writes_nothing(db: Db, args: tuple[str, str, str]) -> None:
    """The trim checks its arguments before it removes anything or moves the base."""
    db.xadd(keys.AUDIT_STREAM, {"seq": "1"}, id="1-0")
    refuses_and_writes_nothing(db, TRIM_SCRIPT, 2, keys.AUDIT_STREAM, keys.AUDIT_BASE, *args, name="audit.trim")


# --- sorting the errors ---------------------------------------------------------------------------------
def test_redis_refusals_are_transient_and_script_errors_permanent(db: Db) -> None:
    """OOM from a full Redis is retried later; a Lua runtime error is dead-lettered at once, naming the script."""
    db.config_set("maxmemory-policy", "noeviction")
    db.config_set("maxmemory", "1")
    try:
        with pytest.raises(ResponseError) as oom:
            db.eval(INGEST_SCRIPT, INGEST_KEYS, *ingest_args())
    finally:
        db.config_set("maxmemory", "0")
    assert decide(oom.value, attempt=1, max_attempts=8, base=0.1, cap=1).retry
    db.hset(keys.deployment(DEPLOYMENT), "updated", "1")
    db.hset(keys.deployment(DEPLOYMENT), "last_event_id", "x")
    db.delete(keys.deployment_history(DEPLOYMENT))
    db.set(keys.deployment_history(DEPLOYMENT), "not a list")  # LPUSH fails inside the script: WRONGTYPE
    with pytest.raises(ResponseError) as script_error:
        _apply(db, 2, "evt_z", "ready")
    d = decide(script_error.value, attempt=1, max_attempts=8, base=0.1, cap=1)
    assert not d.retry and d.reason == "script_error:deployments.apply"
    for transient in ("BUSY Redis is busy running a script", "LOADING Redis is loading", "MASTERDOWN Link down",
                      "READONLY You can't write against a read only replica."):
        failure = classify(ResponseError(transient))
        assert failure is not None and failure.transient, transient


async def test_a_worker_dead_letters_a_corrupt_record_at_once(redis: Redis, redis_url: str, tmp_path: Path) -> None:
    """An event whose stored attempts is corrupt: dead-lettered on the first try with the script's code."""
    ingestor = Ingestor(redis, dedup_ttl=600, event_retention=600, dead_letter_retention=600, job_expiry_s=600)
    event = example_event("deployment.created", created=MAX_CREATED)
    await ingestor.ingest(Delivery(wanted=IngestOutcome.QUEUED, event_id=event["id"], type=event["type"],
                                   created=event["created"], header=b"", body=json.dumps(event).encode(),
                                   request_id="r", secret_index=0, received_ms=time.time_ns() // 1_000_000))
    await as_async_db(redis).hset(keys.event(event["id"]), "attempts", "abc")
    worker = build_worker(make_settings(redis_url, tmp_path), burst=True)
    on_shutdown = worker.on_shutdown  # arq types it optional; build_worker always sets it
    assert on_shutdown is not None
    try:
        await worker.main()
    finally:
        await on_shutdown(worker.ctx)
        await worker.pool.aclose()
    record = await as_async_db(redis).hgetall(keys.event(event["id"]))
    assert record[b"state"] == b"dead_lettered"
    assert record[b"reason"] == b"script_error:records.start"
