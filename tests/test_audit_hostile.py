"""The audit log against someone with write access to Redis (but not the webhook secret), and bad input.

Copies, forgeries, cut exports, trims that move the base, malformed entries and files: each gets a named
problem and exit 1, never a traceback. Duplicates of a large body store it once.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from runinfra_webhooks.service.core.audit import chain_hash, entry_digest
from runinfra_webhooks.service.storage import keys
from tests.builders import example_event, signed_delivery
from tests.processes import cli, stack_env
from tests.redis_server import Db

PATH = "/webhooks/runinfra"


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return stack_env(redis_url, "http://127.0.0.1:9/v1", tmp_path / "artifacts")


@pytest.fixture
def filled(receiver_url: str, db: Db) -> list[str]:
    """Four audited deliveries (queued, duplicate, queued, ignored); their stream ids."""
    event = example_event()
    for body, headers in (signed_delivery(event), signed_delivery(event), signed_delivery(example_event()),
                          signed_delivery(example_event(type="billing.paid"))):
        assert httpx.post(receiver_url + PATH, content=body, headers=headers, timeout=10).status_code < 300
    return [i.decode() for i, _ in db.xrange(keys.AUDIT_STREAM)]


def _clean_failure(out: subprocess.CompletedProcess[str], code: str) -> None:
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert code in out.stderr, out.stderr


def _append(db: Db, fields: dict[bytes, bytes]) -> None:
    """Append an entry with seq, prev, hash and the head recomputed: what write access to Redis allows."""
    seq, prev = int(db.hget(keys.AUDIT_HEAD, "seq") or 0) + 1, (db.hget(keys.AUDIT_HEAD, "hash") or b"").decode()
    fields = dict(fields)
    fields[b"seq"], fields[b"prev"] = str(seq).encode(), prev.encode()
    fields[b"hash"] = chain_hash(prev, seq, fields[b"outcome"].decode(), fields[b"digest"].decode()).encode()
    db.xadd(keys.AUDIT_STREAM, fields)
    db.hset(keys.AUDIT_HEAD, mapping={"seq": seq, "hash": fields[b"hash"]})


# --- malformed input --------------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value"), [(b"seq", b"abc"), (b"seq", None), (b"received_ms", b"x")],
                         ids=["seq=abc", "no-seq", "received_ms=x"])
def test_verify_reports_a_malformed_entry_without_a_traceback(
    env: dict[str, str], filled: list[str], db: Db, field: bytes, value: bytes | None
) -> None:
    """An entry with a non-numeric or missing seq or received_ms: a malformed_entry line and exit 1."""
    [(_, fields)] = db.xrange(keys.AUDIT_STREAM, filled[1], filled[1])
    if value is None:
        fields.pop(field)
    else:
        fields[field] = value
    entries = db.xrange(keys.AUDIT_STREAM)
    db.delete(keys.AUDIT_STREAM)
    for sid, f in entries:
        db.xadd(keys.AUDIT_STREAM, fields if sid.decode() == filled[1] else f, id=sid)
    _clean_failure(cli(env, "audit", "verify"), "malformed_entry")


@pytest.mark.parametrize("content", [None, "not json at all\n", '{"a": 1}\n', '[1,2]\n', "\x00\xff"],
                         ids=["missing", "garbage", "no-stream-id", "not-an-object", "binary"])
def test_verify_file_reports_a_bad_file_without_a_traceback(
    env: dict[str, str], tmp_path: Path, content: str | None
) -> None:
    """A missing, garbage or non-export --file: one problem line and exit 1."""
    target = tmp_path / "export.jsonl"
    if content is not None:
        target.write_text(content, encoding="latin-1")
    out = cli(env, "audit", "verify", "--file", str(target))
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert str(target) in out.stderr


def test_verify_reports_a_corrupt_head_without_a_traceback(
    env: dict[str, str], filled: list[str], db: Db
) -> None:
    """rwh:audit:head with seq=abc: a clean problem line and exit 1."""
    db.hset(keys.AUDIT_HEAD, "seq", "abc")
    _clean_failure(cli(env, "audit", "verify"), "not a decimal integer")


# --- copies and forgeries -----------------------------------------------------------------------------
def test_verify_detects_a_copied_entry_even_with_the_new_head_as_anchor(
    env: dict[str, str], filled: list[str], db: Db
) -> None:
    """A valid entry copied to the end with chain and head recomputed: duplicate_delivery, anchor or not."""
    [(_, fields)] = db.xrange(keys.AUDIT_STREAM, filled[0], filled[0])
    _append(db, fields)
    head = db.hget(keys.AUDIT_HEAD, "hash")
    assert head is not None
    _clean_failure(cli(env, "audit", "verify"), "duplicate_delivery")
    _clean_failure(cli(env, "audit", "verify", "--anchor", head.decode()), "duplicate_delivery")


@pytest.mark.parametrize("strip_mac", [False, True], ids=["mac-kept", "mac-removed"])
def test_verify_detects_a_made_up_entry_replaying_a_captured_delivery(
    env: dict[str, str], filled: list[str], db: Db, strip_mac: bool
) -> None:
    """A captured signed delivery re-entered with another receive time and a new delivery id: MAC fails."""
    [(_, fields)] = db.xrange(keys.AUDIT_STREAM, filled[0], filled[0])
    forged = dict(fields)
    received_ms = int(fields[b"received_ms"]) + 1000
    forged[b"received_ms"] = str(received_ms).encode()
    forged[b"delivery_id"] = b"f" * 32
    forged[b"digest"] = entry_digest(
        event_id=fields[b"event_id"].decode(), received_ms=received_ms, request_id=fields[b"request_id"].decode(),
        secret_index=int(fields[b"secret_index"]), header=fields[b"header"], body=fields[b"body"],
        delivery_id="f" * 32,
    ).encode()
    forged[b"outcome"] = b"duplicate"
    if strip_mac:
        forged.pop(b"mac")
    _append(db, forged)
    _clean_failure(cli(env, "audit", "verify"), "mac_missing" if strip_mac else "mac_invalid")


# --- cut exports and moved bases ----------------------------------------------------------------------
@pytest.mark.parametrize("cut", ["start", "end", "middle"])
def test_verify_file_detects_an_export_cut(env: dict[str, str], filled: list[str], tmp_path: Path, cut: str) -> None:
    """An export with its first entry, its last lines, or a middle entry removed fails with export_cut."""
    target = tmp_path / "audit.jsonl"
    assert cli(env, "audit", "export", "--out", str(target)).returncode == 0
    assert cli(env, "audit", "verify", "--file", str(target)).returncode == 0
    lines = target.read_text().splitlines()
    kept = {"start": lines[1:], "end": lines[:-2], "middle": lines[:1] + lines[2:]}[cut]
    target.write_text("\n".join(kept) + "\n")
    _clean_failure(cli(env, "audit", "verify", "--file", str(target)), "export_cut")


def test_verify_file_detects_a_rewritten_trailer(env: dict[str, str], filled: list[str], tmp_path: Path) -> None:
    """Cutting the last entry and editing the trailer to match breaks the trailer's MAC."""
    target = tmp_path / "audit.jsonl"
    assert cli(env, "audit", "export", "--out", str(target)).returncode == 0
    *entries, trailer_line = target.read_text().splitlines()
    trailer = json.loads(trailer_line)
    last = json.loads(entries[-2])
    trailer["export"].update(count=len(entries) - 1, head_seq=int(last["seq"]), head_hash=last["hash"])
    target.write_text("\n".join([*entries[:-1], json.dumps(trailer)]) + "\n")
    _clean_failure(cli(env, "audit", "verify", "--file", str(target)), "MAC")


async def test_verify_with_the_archive_detects_a_base_moved_past_unarchived_entries(
    env: dict[str, str], filled: list[str], redis_url: str, db: Db, tmp_path: Path
) -> None:
    """A trim archives entry 1; then entries 2-3 are trimmed by hand and the base moved: Redis alone verifies
    clean (out of its reach), `verify --archive` finds the base is not the last archived entry."""
    from redis.asyncio import Redis

    from runinfra_webhooks.service.storage.audit_store import trim_audit

    archive = tmp_path / "archive"
    client = Redis.from_url(redis_url)
    try:
        assert await trim_audit(client, older_than_ms=int(filled[0].split("-")[0]) + 1, archive_dir=archive,
                                limit=1) == 1
    finally:
        await client.aclose()
    assert cli(env, "audit", "verify", "--archive", str(archive)).returncode == 0
    [(_, third)] = db.xrange(keys.AUDIT_STREAM, filled[2], filled[2])
    db.xtrim(keys.AUDIT_STREAM, minid=filled[3], approximate=False)
    db.hset(keys.AUDIT_BASE, mapping={"seq": third[b"seq"], "hash": third[b"hash"]})
    assert cli(env, "audit", "verify").returncode == 0
    _clean_failure(cli(env, "audit", "verify", "--archive", str(archive)), "base_mismatch")


# --- amplification ------------------------------------------------------------------------------------
def test_50_duplicates_of_a_1_mib_body_grow_redis_by_less_than_two_bodies(
    env: dict[str, str], receiver_url: str, db: Db, tmp_path: Path
) -> None:
    """50 replays of one captured 1 MiB delivery: Redis grows < 2 MiB; verify and an export still check out."""
    event = example_event()
    event["data"]["padding"] = "x" * (1_048_576 - len(json.dumps(event)) - 20)
    body, headers = signed_delivery(event)
    assert 1_000_000 < len(body) <= 1_048_576
    assert httpx.post(receiver_url + PATH, content=body, headers=headers, timeout=30).status_code == 202
    db.memory_purge()
    before = int(db.info("memory")["used_memory"])
    with httpx.Client(timeout=30) as client:
        for _ in range(50):
            assert client.post(receiver_url + PATH, content=body, headers=headers).json()["status"] == "duplicate"
    db.memory_purge()
    grown = int(db.info("memory")["used_memory"]) - before
    assert grown < 2 * len(body), f"Redis grew by {grown / 2**20:.2f} MiB for 50 duplicates"
    assert db.xlen(keys.AUDIT_STREAM) == 51
    assert cli(env, "audit", "verify").returncode == 0
    target = tmp_path / "audit.jsonl"
    assert cli(env, "audit", "export", "--out", str(target)).returncode == 0
    lines = [json.loads(line) for line in target.read_text().splitlines()[:-1]]
    assert all(line["body"].encode() == body for line in lines)  # references resolved in the file
    assert cli(env, "audit", "verify", "--file", str(target)).returncode == 0
