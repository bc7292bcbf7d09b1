"""The tamper-evident audit log: what an entry holds, how it is chained, how it is verified.

Each verified delivery becomes one Redis stream entry, written by the ingest script in the same atomic
step as the dedup mark and the job. An entry carries:

* ``digest``: SHA-256 over its content (event id, receive time, request id, matched secret index, the
  signature header as received, the raw body), computed by the receiver;
* ``seq``: 1, 2, 3, ... with no gaps;
* ``prev`` and ``hash``: ``hash = SHA-1(prev + "\\n" + seq + "\\n" + outcome + "\\n" + digest)``, computed inside
  Redis (Lua offers SHA-1 only) so that the chain and the entry are one atomic write.

``verify_entries`` recomputes every digest and link, checks the sequence, and re-verifies each stored
signature against the configured secrets. It detects an edited entry (digest or link breaks), a removed
one (sequence gap, link breaks) and a reordering (link breaks). It cannot detect someone with write access
who rewrites the whole chain from the edit onwards; an exported head (``seq`` + ``hash``) kept elsewhere
anchors it: a rewritten chain no longer ends in that hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from runinfra_webhooks.service.core import signature

__all__ = ["GENESIS", "AuditProblem", "chain_hash", "entry_digest", "verify_entries"]

GENESIS = "0" * 40


def entry_digest(
    *, event_id: str, received_ms: int, request_id: str, secret_index: int, header: bytes, body: bytes
) -> str:
    h = hashlib.sha256()
    # Length-prefixed fields: no two different entries serialise to the same bytes.
    for part in (event_id.encode(), str(received_ms).encode(), request_id.encode(), str(secret_index).encode(),
                 header, body):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def chain_hash(prev: str, seq: int, outcome: str, digest: str) -> str:
    """Same formula as the Lua script (redis.sha1hex); SHA-1 is what Redis scripting offers."""
    return hashlib.sha1(f"{prev}\n{seq}\n{outcome}\n{digest}".encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditProblem:
    seq: int
    stream_id: str
    code: str  # digest_mismatch | chain_broken | sequence_gap | signature_invalid | base_mismatch
    detail: str


def _text(entry: dict[bytes, bytes], field: str) -> str:
    return entry.get(field.encode(), b"").decode("utf-8", "replace")


def verify_entries(
    entries: Iterable[tuple[str, dict[bytes, bytes]]],
    *,
    secrets: Sequence[bytes],
    tolerance: int,
    base_seq: int = 0,
    base_hash: str = GENESIS,
) -> tuple[int, AuditProblem | None]:
    """Check entries in stream order; return (entries checked, first problem or None)."""
    expected_seq, expected_prev = base_seq + 1, base_hash
    checked = 0
    for stream_id, e in entries:
        seq = int(_text(e, "seq") or 0)
        if seq != expected_seq:
            return checked, AuditProblem(seq, stream_id, "sequence_gap", f"expected seq {expected_seq}")
        if _text(e, "prev") != expected_prev:
            return checked, AuditProblem(seq, stream_id, "chain_broken", "prev does not match the entry before")
        secret_index = int(_text(e, "secret_index") or -1)
        received_ms = int(_text(e, "received_ms") or 0)
        header, body = e.get(b"header", b""), e.get(b"body", b"")
        digest = entry_digest(
            event_id=_text(e, "event_id"), received_ms=received_ms, request_id=_text(e, "request_id"),
            secret_index=secret_index, header=header, body=body,
        )
        if digest != _text(e, "digest"):
            return checked, AuditProblem(seq, stream_id, "digest_mismatch", "entry content was changed")
        if chain_hash(expected_prev, seq, _text(e, "outcome"), digest) != _text(e, "hash"):
            return checked, AuditProblem(seq, stream_id, "chain_broken", "hash does not match the entry")
        result = signature.verify(
            header.decode("utf-8", "replace"), body, secrets, tolerance, received_ms // 1000
        )
        if result.outcome is not signature.Outcome.OK or result.secret_index != secret_index:
            detail = f"stored signature re-verifies as {result.outcome.value}"
            return checked, AuditProblem(seq, stream_id, "signature_invalid", detail)
        expected_seq, expected_prev = seq + 1, _text(e, "hash")
        checked += 1
    return checked, None


def entry_as_json(stream_id: str, e: dict[bytes, bytes]) -> dict[str, Any]:
    """One exported line: text fields as text, the raw body and header as they were stored."""
    out: dict[str, Any] = {"stream_id": stream_id}
    for key, value in e.items():
        name = key.decode()
        try:
            out[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            out[name + "_hex"] = value.hex()
    return out
