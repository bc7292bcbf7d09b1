"""`audit verify` and `audit export` stream the log: they hold one batch, never the whole of it.

The pure parts are pinned by what they pull from an iterator; the commands by their peak RSS at two sizes
of a real log (a whole-log version grows by kilobytes an entry, a streamed one by the delivery id alone),
and by the outcome of the checks that the streamed version must still order as before: a bad line or a
cut is reported before a problem in an entry that comes earlier in the file.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bench.audit_scale import MEASURE
from runinfra_webhooks.service.console.operations import verify_audit
from runinfra_webhooks.service.core.audit import GENESIS, ChainVerifier, chain_hash, entry_as_json, verify_entries
from runinfra_webhooks.service.core.audit_file import AuditFileError, ExportReader, ExportTrailer
from runinfra_webhooks.service.storage import keys
from tests.audit_fill import BIG_BODY, audit_entries, fill_audit
from tests.builders import SECRET
from tests.processes import cli, stack_env
from tests.redis_server import Db

SECRETS = (SECRET.encode(),)


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return stack_env(redis_url, "http://127.0.0.1:9/v1", tmp_path / "artifacts")


def _entries(n: int) -> list[tuple[str, dict[bytes, bytes]]]:
    return [(f"{seq}-0", e) for seq, e in enumerate(audit_entries(n), start=1)]


def _bodies(ref: str) -> bytes | None:
    return BIG_BODY if ref == hashlib.sha256(BIG_BODY).hexdigest() else None


Entry = tuple[str, dict[bytes, bytes]]


def _counted(items: list[Entry], pulled: list[int]) -> Iterator[Entry]:
    for item in items:
        pulled[0] += 1
        yield item


# --- the pure parts --------------------------------------------------------------------------------
def test_verify_entries_pulls_the_log_no_further_than_its_first_problem() -> None:
    """A tampered entry at seq 10 of 300: the verifier has pulled 10 entries, not the log."""
    entries = _entries(300)
    sid, fields = entries[9]
    entries[9] = (sid, {**fields, b"request_id": b"req_edited"})
    pulled = [0]
    checked, problem = verify_entries(_counted(entries, pulled), secrets=SECRETS, tolerance=300, bodies=_bodies)
    assert problem is not None
    assert (problem.code, problem.seq, checked, pulled[0]) == ("digest_mismatch", 10, 9, 10)


def test_chain_verifier_checks_entry_by_entry_and_keeps_the_newest_and_the_anchor() -> None:
    """Fed one at a time, it counts, tracks the newest (seq, hash), sees the anchor, and keeps its first problem."""
    entries = _entries(250)
    anchor = entries[120][1][b"hash"].decode()
    verifier = ChainVerifier(secrets=SECRETS, tolerance=300, anchor=anchor)
    assert verifier.last == (0, GENESIS)
    for n, (sid, fields) in enumerate(entries, start=1):
        assert verifier.feed(sid, fields, _bodies) is None
        assert verifier.checked == n
        assert verifier.anchor_seen is (n > 120)
    assert verifier.last == (250, entries[-1][1][b"hash"].decode())
    replayed = verifier.feed(*entries[0])
    assert replayed is not None and replayed.code == "sequence_gap"
    assert verifier.feed(*entries[1]) is replayed  # the first problem stays the answer
    assert verifier.checked == 250


def test_chain_verifier_without_the_referenced_body_reports_body_missing() -> None:
    """Bodies are resolved per entry through the lookup given with it: without it, body_missing at seq 100."""
    verifier = ChainVerifier(secrets=SECRETS, tolerance=300)
    problem = None
    for sid, fields in _entries(150):
        problem = verifier.feed(sid, fields)
        if problem is not None:
            break
    assert problem is not None and (problem.code, problem.seq) == ("body_missing", 100)


def _lines(entries: list[tuple[str, dict[bytes, bytes]]], trailer: ExportTrailer) -> list[str]:
    return [json.dumps(entry_as_json(sid, f)) + "\n" for sid, f in entries] + [trailer.as_line() + "\n"]


def test_export_reader_yields_each_entry_as_its_line_is_read_and_the_trailer_at_the_end() -> None:
    """One line pulled per entry yielded; count, first, last and trailer known once read to the end."""
    entries = _entries(5)
    trailer = ExportTrailer(count=5, base_seq=0, base_hash=GENESIS, head_seq=5,
                            head_hash=entries[-1][1][b"hash"].decode(), exported_ms=1)
    lines = _lines(entries, trailer)
    pulled = [0]

    def source() -> Iterator[str]:
        for line in lines:
            pulled[0] += 1
            yield line

    reader = ExportReader(source())
    read = iter(reader)
    assert next(read) == entries[0] and pulled[0] == 1
    assert next(read) == entries[1] and pulled[0] == 2
    assert list(read) == entries[2:]
    assert (reader.count, reader.first, reader.last, reader.trailer) == (5, entries[0], entries[-1], trailer)


def test_export_reader_refuses_an_entry_after_the_trailer() -> None:
    entries = _entries(2)
    trailer = ExportTrailer(count=1, base_seq=0, base_hash=GENESIS, head_seq=1,
                            head_hash=entries[0][1][b"hash"].decode(), exported_ms=1)
    lines = [*_lines(entries[:1], trailer), json.dumps(entry_as_json(*entries[1])) + "\n"]
    with pytest.raises(AuditFileError, match="line 3: entries after the export trailer"):
        list(ExportReader(lines))


# --- the commands on a real log ---------------------------------------------------------------------
# Peak RSS through bench.audit_scale's measuring interpreter: a child of pytest would never report less
# than pytest's own peak (Linux keeps it across exec).
def _peak_rss_kib(env: dict[str, str], *args: str) -> tuple[int, str]:
    """(peak RSS KiB, stderr) of one console-script run, which must succeed."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *args], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    stderr, _, measured = out.stderr.rstrip("\n").rpartition("\n")
    peak, _cpu_seconds, exit_code = measured.split()
    assert exit_code == "0", out.stderr
    return int(peak), stderr


def test_verify_and_export_memory_stays_flat_from_2k_to_20k_entries(
    env: dict[str, str], db: Db, tmp_path: Path
) -> None:
    """18,000 more entries cost the commands less than 10 MiB (whole-log versions: 45 MiB and more)."""
    export = tmp_path / "export.jsonl"
    peaks: dict[str, list[int]] = {"export": [], "verify": [], "verify --file": []}
    for n in (2_000, 20_000):
        db.delete(keys.AUDIT_STREAM, keys.AUDIT_HEAD)
        fill_audit(db, n)
        rss, err = _peak_rss_kib(env, "audit", "export", "--out", str(export))
        assert f'"exported": {n},' in err
        peaks["export"].append(rss)
        rss, err = _peak_rss_kib(env, "audit", "verify")
        assert f"audit log ok: {n} entries" in err
        peaks["verify"].append(rss)
        rss, err = _peak_rss_kib(env, "audit", "verify", "--file", str(export))
        assert f"audit log ok: {n} entries" in err
        peaks["verify --file"].append(rss)
    growth = {command: (big - small) / 1024 for command, (small, big) in peaks.items()}
    assert all(mib < 10 for mib in growth.values()), (growth, peaks)


def test_export_stops_at_the_head_it_read_first(env: dict[str, str], db: Db, tmp_path: Path) -> None:
    """An entry past the head (received during the export) is left out; the file verifies on its own."""
    fill_audit(db, 2_500)
    [(_, newest)] = db.xrange(keys.AUDIT_STREAM, "-", "+")[-1:]
    db.xadd(keys.AUDIT_STREAM, {**newest, b"seq": b"2501"})
    export = tmp_path / "export.jsonl"
    out = cli(env, "audit", "export", "--out", str(export))
    assert out.returncode == 0, out.stderr
    assert '"exported": 2500,' in out.stderr
    lines = export.read_text().splitlines()
    assert len(lines) == 2501 and json.loads(lines[-1])["export"]["head_seq"] == 2500
    assert json.loads(lines[99])["body"] == BIG_BODY.decode()  # the referenced body inlined
    verified = cli(env, "audit", "verify", "--file", str(export))
    assert verified.returncode == 0, verified.stderr
    assert "audit log ok: 2500 entries" in verified.stderr


@pytest.fixture
def exported(env: dict[str, str], db: Db, tmp_path: Path) -> list[str]:
    """The lines of an export of 1,200 entries."""
    fill_audit(db, 1_200)
    export = tmp_path / "export.jsonl"
    out = cli(env, "audit", "export", "--out", str(export))
    assert out.returncode == 0, out.stderr
    return export.read_text().splitlines(keepends=True)


def _tamper(line: str) -> str:
    obj = json.loads(line)
    obj["request_id"] = "req_edited"
    return json.dumps(obj) + "\n"


def test_verify_file_reports_a_bad_line_before_an_earlier_tampered_entry(
    env: dict[str, str], exported: list[str], tmp_path: Path
) -> None:
    """Entry 3 edited and line 1,000 not JSON: the file is malformed (it is read whole before judging)."""
    lines = list(exported)
    lines[2], lines[999] = _tamper(lines[2]), "not json\n"
    target = tmp_path / "bad.jsonl"
    target.write_text("".join(lines))
    out = cli(env, "audit", "verify", "--file", str(target))
    assert out.returncode == 1
    assert "malformed_entry: line 1000: not JSON" in out.stderr, out.stderr
    assert "digest_mismatch" not in out.stderr


def test_verify_file_reports_a_cut_before_an_earlier_tampered_entry(
    env: dict[str, str], exported: list[str], tmp_path: Path
) -> None:
    """Entry 3 edited and the last 100 entries cut (trailer kept): export_cut, not the edit."""
    lines = [*exported[:2], _tamper(exported[2]), *exported[3:-101], *exported[-1:]]
    target = tmp_path / "cut.jsonl"
    target.write_text("".join(lines))
    out = cli(env, "audit", "verify", "--file", str(target))
    assert out.returncode == 1
    assert "export_cut: the trailer counts 1200 entries, the file holds 1100" in out.stderr, out.stderr


def test_verify_file_reports_the_first_tampered_entry_of_a_whole_file(
    env: dict[str, str], exported: list[str], tmp_path: Path
) -> None:
    """A whole file with entry 1,150 edited: digest_mismatch at seq 1150, 1,149 verified before it."""
    lines = list(exported)
    lines[1149] = _tamper(lines[1149])
    target = tmp_path / "edited.jsonl"
    target.write_text("".join(lines))
    out = cli(env, "audit", "verify", "--file", str(target))
    assert out.returncode == 1
    assert "seq=1150" in out.stderr and "digest_mismatch" in out.stderr, out.stderr
    assert "1149 entries verified before it" in out.stderr


async def test_console_verify_in_chunks_detects_a_copy_of_an_entry_from_an_earlier_chunk(db: Db, redis: Redis) -> None:
    """Entry 1 copied to seq 251 with the chain and head recomputed, verified 100 at a time: duplicate_delivery."""
    fill_audit(db, 250)
    copy = dict(db.xrange(keys.AUDIT_STREAM)[0][1])
    prev = db.xrange(keys.AUDIT_STREAM)[-1][1][b"hash"].decode()
    copy[b"seq"], copy[b"prev"] = b"251", prev.encode()
    copy[b"hash"] = chain_hash(prev, 251, copy[b"outcome"].decode(), copy[b"digest"].decode()).encode()
    db.xadd(keys.AUDIT_STREAM, copy)
    db.hset(keys.AUDIT_HEAD, mapping={"seq": 251, "hash": copy[b"hash"]})
    result = await verify_audit(redis, secrets=SECRETS, tolerance=300, chunk=100)
    assert result["ok"] is False and result["checked"] == 250
    assert (result["problem"]["code"], result["problem"]["seq"]) == ("duplicate_delivery", 251)
