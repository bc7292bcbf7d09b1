"""The audit log from the outside: `audit export` and `audit verify` on a real Redis, and tampering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runinfra_webhooks.service.storage import keys
from tests.builders import OLD_SECRET, SECRET, example_event, post_delivery, signed_delivery
from tests.processes import cli, stack_env
from tests.redis_server import Db


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return stack_env(redis_url, "http://127.0.0.1:9/v1", tmp_path / "artifacts")


@pytest.fixture
def filled(receiver_url: str, db: Db) -> list[str]:
    """Five audited deliveries: queued, duplicate, old-secret, ignored, invalid JSON."""
    event = example_event()
    deliveries = [
        signed_delivery(event),
        signed_delivery(event),
        signed_delivery(example_event(), secret=OLD_SECRET),
        signed_delivery(example_event(type="billing.paid")),
        signed_delivery(body=b"\xff not json"),
    ]
    for body, headers in deliveries:
        post_delivery(receiver_url, body, headers, timeout=10)
    ids = [i.decode() for i, _ in db.xrange(keys.AUDIT_STREAM)]
    assert len(ids) == 5
    return ids


def test_verify_passes_on_an_untouched_log(env: dict[str, str], filled: list[str]) -> None:
    """An untouched log verifies: every stored signature re-verifies and the chain holds."""
    out = cli(env, "audit", "verify")
    assert out.returncode == 0, out.stderr
    assert "5 entries" in out.stderr


def test_export_writes_every_entry_with_its_raw_bytes(env: dict[str, str], filled: list[str], tmp_path: Path) -> None:
    """`audit export --out F` writes one JSON line per entry, raw body and header included, then a trailer."""
    target = tmp_path / "audit.jsonl"
    out = cli(env, "audit", "export", "--out", str(target))
    assert out.returncode == 0, out.stderr
    *lines, trailer = [json.loads(line) for line in target.read_text().splitlines()]
    assert [line["seq"] for line in lines] == ["1", "2", "3", "4", "5"]
    assert trailer["export"]["count"] == 5 and trailer["export"]["head_hash"] == lines[-1]["hash"]
    assert [line["outcome"] for line in lines] == ["queued", "duplicate", "queued", "ignored", "invalid_json"]
    assert "t=" in lines[0]["header"] and "body" in lines[0]
    assert bytes.fromhex(lines[4]["body_hex"]) == b"\xff not json"
    summary = json.loads(out.stderr.strip().splitlines()[-1])
    assert summary["exported"] == 5 and summary["head_hash"] == lines[-1]["hash"]
    assert cli(env, "audit", "verify", "--file", str(target), "--anchor", summary["head_hash"]).returncode == 0


def test_verify_detects_an_edited_body(env: dict[str, str], filled: list[str], db: Db) -> None:
    """Rewriting an entry (delete and re-add with the same fields but another body) fails at that entry."""
    stream_id = filled[2]
    [(_, fields)] = db.xrange(keys.AUDIT_STREAM, stream_id, stream_id)
    fields[b"body"] = fields[b"body"].replace(b"deployment", b"Deployment")
    rebuild(db, {stream_id: fields})
    out = cli(env, "audit", "verify")
    assert out.returncode == 1
    assert "seq=3" in out.stderr and "digest_mismatch" in out.stderr


def test_verify_detects_a_removed_entry(env: dict[str, str], filled: list[str], db: Db) -> None:
    """XDEL of a middle entry is a sequence gap."""
    db.xdel(keys.AUDIT_STREAM, filled[1])
    out = cli(env, "audit", "verify")
    assert out.returncode == 1 and "sequence_gap" in out.stderr


def test_verify_detects_a_removed_newest_entry(env: dict[str, str], filled: list[str], db: Db) -> None:
    """Dropping the newest entry is caught against the recorded head."""
    db.xdel(keys.AUDIT_STREAM, filled[-1])
    assert cli(env, "audit", "verify").returncode == 1


def test_verify_detects_a_deleted_log(env: dict[str, str], filled: list[str], db: Db) -> None:
    """Deleting the whole stream is caught: no entries, but the recorded head says there were five."""
    db.delete(keys.AUDIT_STREAM)
    out = cli(env, "audit", "verify")
    assert out.returncode == 1 and "recorded head" in out.stderr


def test_verify_detects_a_reordering(env: dict[str, str], filled: list[str], db: Db) -> None:
    """Swapping two entries' contents (keeping seq numbers in order) breaks the chain."""
    entries = dict(db.xrange(keys.AUDIT_STREAM))
    a, b = (i.encode() for i in filled[1:3])
    swapped_a, swapped_b = dict(entries[b]), dict(entries[a])
    swapped_a[b"seq"], swapped_b[b"seq"] = entries[a][b"seq"], entries[b][b"seq"]
    rebuild(db, {filled[1]: swapped_a, filled[2]: swapped_b})
    out = cli(env, "audit", "verify")
    assert out.returncode == 1 and "seq=2" in out.stderr


def test_verify_detects_a_forged_signature(env: dict[str, str], filled: list[str], db: Db) -> None:
    """Verification with only the old secret configured fails on the first entry signed with the new one."""
    env = dict(env, RUNINFRA_WEBHOOK_SECRET=OLD_SECRET)
    out = cli(env, "audit", "verify")
    assert out.returncode == 1 and "signature_invalid" in out.stderr
    assert SECRET not in out.stderr + out.stdout


def test_anchor_detects_a_rewritten_chain(env: dict[str, str], filled: list[str], db: Db) -> None:
    """An anchor hash that is no longer in the chain fails verification."""
    assert cli(env, "audit", "verify", "--anchor", "f" * 40).returncode == 1


def rebuild(db: Db, replace: dict[str, dict[bytes, bytes]]) -> None:
    """Recreate the stream with explicit ids, swapping in the given entries (what an attacker could do)."""
    entries = db.xrange(keys.AUDIT_STREAM)
    db.delete(keys.AUDIT_STREAM)
    for stream_id, fields in entries:
        sid = stream_id.decode()
        db.xadd(keys.AUDIT_STREAM, replace.get(sid, fields), id=sid)


async def test_retention_archives_then_trims_and_the_rest_still_verifies(
    env: dict[str, str], filled: list[str], redis_url: str, tmp_path: Path
) -> None:
    """Trimming by age writes the old entries to an archive first; the chain's base moves, both verify."""
    from redis.asyncio import Redis

    from runinfra_webhooks.service.storage.audit_store import trim_audit

    cutoff_ms = int(filled[2].split("-")[0]) + 1  # entries received before the fourth
    client = Redis.from_url(redis_url)
    try:
        removed = await trim_audit(client, older_than_ms=cutoff_ms, archive_dir=tmp_path / "archive")
        assert removed >= 3
        assert await client.xlen(keys.AUDIT_STREAM) == 5 - removed
    finally:
        await client.aclose()
    [archive] = (tmp_path / "archive").glob("audit-*.jsonl")
    assert len(archive.read_text().splitlines()) == removed + 1  # and the trailer
    assert cli(env, "audit", "verify").returncode == 0
    assert cli(env, "audit", "verify", "--file", str(archive)).returncode == 0
