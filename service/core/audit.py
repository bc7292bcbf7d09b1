"""The tamper-evident audit log: what an entry holds, how it is chained, how it is verified.

Each verified delivery becomes one Redis stream entry, written by the ingest script in the same atomic
step as the dedup mark and the job. An entry carries:

* ``delivery_id``: a random id the receiver makes per delivery, so no two genuine entries are alike;
* ``digest``: SHA-256 over its content (delivery id, event id, receive time, request id, matched secret
  index, the signature header as received, and the SHA-256 of the raw body), computed by the receiver;
* ``mac``: HMAC-SHA256 over the outcome and the digest, keyed from the webhook secret that verified the
  delivery (``entry_key``). That secret never enters Redis, so write access to Redis alone cannot make an
  entry with a new digest (another receive time, another body) verify;
* ``seq``: 1, 2, 3, ... with no gaps;
* ``prev`` and ``hash``: ``hash = SHA-1(prev + "\\n" + seq + "\\n" + outcome + "\\n" + digest)``, computed inside
  Redis (Lua offers SHA-1 only) so that the chain and the entry are one atomic write;
* ``body`` inline, or empty with ``body_ref`` = the body's SHA-256 when a duplicate's body is kept once
  in a content-addressed key (``keys.audit_body``); exports resolve the reference.

``ChainVerifier`` (entry by entry; ``verify_entries`` over an iterable) recomputes every digest, MAC and
link, checks the sequence, refuses a delivery id seen twice (a copied entry), and re-verifies each stored
signature against the configured secrets. It detects an edited entry (digest or MAC or link breaks), a
removed one (sequence gap, link breaks), a reordering (link breaks), a copy (delivery id repeated) and a
made-up entry (MAC). What it cannot detect from Redis alone is a cut at the newest end together with the
head moved back; an exported head (``seq`` + ``hash``) kept
elsewhere anchors it.

Entries written before delivery ids and MACs existed (no ``mac`` field) are verified as before, and only
as a prefix of the chain: after the first entry with a MAC, every entry must carry one.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from runinfra_webhooks.service.core import signature

__all__ = [
    "GENESIS", "AuditProblem", "BodyLookup", "ChainVerifier", "EntryMac", "body_sha256", "chain_hash", "entry_as_json",
    "entry_digest", "entry_key", "entry_mac", "verify_entries",
]

GENESIS = "0" * 40
_KEY_LABEL = b"runinfra-webhooks audit entry key v1"


def _length_prefixed(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    # Length-prefixed fields: no two different entries serialise to the same bytes.
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def body_sha256(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


def entry_digest(
    *, event_id: str, received_ms: int, request_id: str, secret_index: int, header: bytes, body: bytes,
    delivery_id: str | None = None, body_hash: bytes | None = None,
) -> str:
    """The entry's content digest. With ``delivery_id`` (entries that carry a MAC) the body enters as its
    SHA-256 (``body_hash``, computed from ``body`` when not given); without, as the legacy format did."""
    common = (event_id.encode(), str(received_ms).encode(), request_id.encode(), str(secret_index).encode(),
              header)
    if delivery_id is None:
        return _length_prefixed((*common, body))
    return _length_prefixed((delivery_id.encode(), *common, body_hash or body_sha256(body)))


def entry_key(secret: bytes) -> bytes:
    """The MAC key of entries verified with ``secret``: derived from it, never stored anywhere."""
    return hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()


class EntryMac:
    """HMAC-SHA256 with one key (RFC 2104, the same bytes as ``hmac``), its padded key states hashed once:
    the receiver computes two MACs per delivery, and OpenSSL's one-shot HMAC costs twice as much."""

    def __init__(self, key: bytes) -> None:
        block = key.ljust(64, b"\0")  # entry keys are 32 bytes, below SHA-256's 64-byte block
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def __call__(self, outcome: str, digest: str) -> str:
        inner = self._inner.copy()
        inner.update(f"{outcome}\n{digest}".encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


def entry_mac(key: bytes, outcome: str, digest: str) -> str:
    return hmac.new(key, f"{outcome}\n{digest}".encode(), hashlib.sha256).hexdigest()


def chain_hash(prev: str, seq: int, outcome: str, digest: str) -> str:
    """Same formula as the Lua script (redis.sha1hex); SHA-1 is what Redis scripting offers."""
    return hashlib.sha1(f"{prev}\n{seq}\n{outcome}\n{digest}".encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditProblem:
    seq: int
    stream_id: str
    # malformed_entry | digest_mismatch | mac_invalid | mac_missing | duplicate_delivery | body_missing |
    # chain_broken | sequence_gap | signature_invalid | base_mismatch | head_mismatch | export_cut
    code: str
    detail: str


def _text(entry: dict[bytes, bytes], field: str) -> str:
    return entry.get(field.encode(), b"").decode("utf-8", "replace")


def _int(e: dict[bytes, bytes], field: str) -> int | None:
    raw = e.get(field.encode())
    if raw is None or not raw.isdigit() or len(raw) > 18:
        return None
    return int(raw)


BodyLookup = Callable[[str], bytes | None]


class ChainVerifier:
    """Checks entries one at a time, in stream order, keeping only what the next entry is checked against.

    ``feed`` returns the first problem (and the same problem for every entry fed after it), so a caller can
    stream a log of any length through it. What it keeps per entry is the delivery id alone (a copy is an
    earlier entry's id again). ``anchor``, when given, is looked for among the base's and the verified entries'
    hashes (``anchor_seen``).
    """

    def __init__(self, *, secrets: Sequence[bytes], tolerance: int, base_seq: int = 0, base_hash: str = GENESIS,
                 bodies: BodyLookup | None = None, anchor: str | None = None) -> None:
        self._secrets, self._tolerance, self._bodies = secrets, tolerance, bodies
        self._keys = [entry_key(s) for s in secrets]
        self._seen: set[bytes] = set()
        self._macs_began = False
        self._anchor = anchor
        self.anchor_seen = anchor is not None and anchor == base_hash
        self.checked = 0
        self.problem: AuditProblem | None = None
        # (seq, hash) of the newest verified entry, or the base before any.
        self.last: tuple[int, str] = (base_seq, base_hash)

    def feed(self, stream_id: str, e: dict[bytes, bytes], bodies: BodyLookup | None = None) -> AuditProblem | None:
        """Check the next entry; ``bodies`` overrides the lookup given at construction for this entry."""
        if self.problem is None:
            self.problem = self._check(stream_id, e, bodies or self._bodies)
            if self.problem is None:
                self.checked += 1
                self.last = (self.last[0] + 1, _text(e, "hash"))
                if self.last[1] == self._anchor:
                    self.anchor_seen = True
        return self.problem

    def _check(self, stream_id: str, e: dict[bytes, bytes], bodies: BodyLookup | None) -> AuditProblem | None:
        expected_seq, expected_prev = self.last[0] + 1, self.last[1]
        seq = _int(e, "seq")
        shown = seq if seq is not None else expected_seq
        secret_index, received_ms = _int(e, "secret_index"), _int(e, "received_ms")
        if seq is None or secret_index is None or received_ms is None:
            bad = [f for f, v in (("seq", seq), ("secret_index", secret_index), ("received_ms", received_ms))
                   if v is None]
            return AuditProblem(shown, stream_id, "malformed_entry",
                                f"{', '.join(bad)} missing or not a decimal integer")
        if seq != expected_seq:
            return AuditProblem(seq, stream_id, "sequence_gap", f"expected seq {expected_seq}")
        if _text(e, "prev") != expected_prev:
            return AuditProblem(seq, stream_id, "chain_broken", "prev does not match the entry before")
        header, body = e.get(b"header", b""), e.get(b"body", b"")
        outcome, mac = _text(e, "outcome"), _text(e, "mac")
        ref = _text(e, "body_ref")
        if ref and not body:
            found = bodies(ref) if bodies is not None else None
            if found is None or hashlib.sha256(found).hexdigest() != ref:
                return AuditProblem(seq, stream_id, "body_missing",
                                    f"the body it references ({ref[:16]}...) is not available")
            body = found
        if mac:
            self._macs_began = True
            delivery_id = e.get(b"delivery_id", b"")
            if not delivery_id:
                return AuditProblem(seq, stream_id, "malformed_entry", "delivery_id missing")
            if delivery_id in self._seen:
                return AuditProblem(seq, stream_id, "duplicate_delivery",
                                    "an earlier entry has the same delivery id: a copy")
            self._seen.add(delivery_id)
            digest = entry_digest(
                event_id=_text(e, "event_id"), received_ms=received_ms, request_id=_text(e, "request_id"),
                secret_index=secret_index, header=header, body=body, delivery_id=delivery_id.decode(),
            )
        elif self._macs_began:
            return AuditProblem(seq, stream_id, "mac_missing",
                                "no MAC after entries that carry one: not written by the receiver")
        else:
            digest = entry_digest(
                event_id=_text(e, "event_id"), received_ms=received_ms, request_id=_text(e, "request_id"),
                secret_index=secret_index, header=header, body=body,
            )
        if digest != _text(e, "digest"):
            return AuditProblem(seq, stream_id, "digest_mismatch", "entry content was changed")
        if chain_hash(expected_prev, seq, outcome, digest) != _text(e, "hash"):
            return AuditProblem(seq, stream_id, "chain_broken", "hash does not match the entry")
        result = signature.verify(
            header.decode("utf-8", "replace"), body, self._secrets, self._tolerance, received_ms // 1000
        )
        if result.outcome is not signature.Outcome.OK or result.secret_index != secret_index:
            detail = f"stored signature re-verifies as {result.outcome.value}"
            return AuditProblem(seq, stream_id, "signature_invalid", detail)
        if mac and not hmac.compare_digest(mac, entry_mac(self._keys[secret_index], outcome, digest)):
            return AuditProblem(seq, stream_id, "mac_invalid",
                                "the MAC does not match: the entry was not written by the receiver")
        return None


def verify_entries(
    entries: Iterable[tuple[str, dict[bytes, bytes]]],
    *,
    secrets: Sequence[bytes],
    tolerance: int,
    base_seq: int = 0,
    base_hash: str = GENESIS,
    bodies: BodyLookup | None = None,
) -> tuple[int, AuditProblem | None]:
    """Check entries in stream order; return (entries checked, first problem or None).

    ``bodies`` resolves a ``body_ref`` (a body's SHA-256, hex) to the bytes; entries exported by
    ``audit export`` carry their bodies inline. ``entries`` is pulled no further than the first problem.
    """
    verifier = ChainVerifier(secrets=secrets, tolerance=tolerance, base_seq=base_seq, base_hash=base_hash,
                             bodies=bodies)
    for stream_id, e in entries:
        if verifier.feed(stream_id, e) is not None:
            break
    return verifier.checked, verifier.problem


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
