"""The ``runinfra-signature`` scheme: verify on receipt, sign for senders and tests.

Pure and I/O-free so it can be tested against the contract's vectors and fuzzed. ``verify`` is total:
whatever the header and body, it returns exactly one ``Verification`` and never raises, because it
runs on untrusted input before anything else. The signature is checked before the timestamp, so a
caller without a secret learns nothing about the server's clock. It costs one HMAC per configured
secret; every ``v1`` is compared against every expected value with ``hmac.compare_digest``, without
stopping at the first match, so timing does not reveal which candidate or secret matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["MAX_HEADER_LENGTH", "MAX_SIGNATURES", "Outcome", "Verification", "sign", "verify"]

MAX_HEADER_LENGTH = 8192
MAX_SIGNATURES = 8
_TIMESTAMP = re.compile(r"0|[1-9][0-9]{0,11}")  # canonical decimal Unix seconds, ASCII digits only
_OWS = " \t"  # HTTP optional whitespace around elements


class Outcome(StrEnum):
    OK = "ok"
    MISSING_SIGNATURE = "missing_signature"
    MALFORMED_SIGNATURE = "malformed_signature"
    NO_V1_SIGNATURE = "no_v1_signature"
    SIGNATURE_MISMATCH = "signature_mismatch"
    TIMESTAMP_TOO_OLD = "timestamp_too_old"
    TIMESTAMP_TOO_NEW = "timestamp_too_new"


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome; which secret matched (``ok`` and the two timestamp outcomes); ``t`` when it parsed."""

    outcome: Outcome
    secret_index: int | None = None
    timestamp: int | None = None


def _hex_hmac(key: bytes, payload: bytes) -> bytes:
    return hmac.digest(key, payload, hashlib.sha256).hex().encode("ascii")


def verify(
    header: str | None, body: bytes, secrets: Sequence[bytes], tolerance: int, now: int
) -> Verification:
    """Check ``header`` (the raw ``runinfra-signature`` value) over ``body`` in the contract's order."""
    if header is None or not header.strip(_OWS):
        return Verification(Outcome.MISSING_SIGNATURE)
    if len(header) > MAX_HEADER_LENGTH:
        return Verification(Outcome.MALFORMED_SIGNATURE)
    stamps: list[str] = []
    candidates: list[bytes] = []
    for element in header.split(","):
        key, sep, value = element.strip(_OWS).partition("=")
        if not sep:
            continue  # empty or bare elements are ignored
        if key == "t":
            stamps.append(value)
        elif key == "v1":
            # Non-ASCII (even lone surrogates) becomes bytes that can never equal lowercase hex.
            candidates.append(value.encode("utf-8", "surrogatepass"))
    if len(stamps) != 1 or _TIMESTAMP.fullmatch(stamps[0]) is None or len(candidates) > MAX_SIGNATURES:
        return Verification(Outcome.MALFORMED_SIGNATURE)
    raw_t = stamps[0]
    timestamp = int(raw_t)
    if not candidates:
        return Verification(Outcome.NO_V1_SIGNATURE, timestamp=timestamp)

    payload = raw_t.encode("ascii") + b"." + bytes(body)
    matched: int | None = None
    for index, secret in enumerate(secrets):
        expected = _hex_hmac(secret, payload)
        hit = False
        for candidate in candidates:
            hit |= hmac.compare_digest(candidate, expected)
        if hit and matched is None:
            matched = index
    if matched is None:
        return Verification(Outcome.SIGNATURE_MISMATCH, timestamp=timestamp)
    if timestamp < now - tolerance:
        return Verification(Outcome.TIMESTAMP_TOO_OLD, matched, timestamp)
    if timestamp > now + tolerance:
        return Verification(Outcome.TIMESTAMP_TOO_NEW, matched, timestamp)
    return Verification(Outcome.OK, matched, timestamp)


def sign(body: bytes, secret: str | bytes, timestamp: int) -> str:
    """Return the ``runinfra-signature`` header value for ``body`` signed with ``secret`` at ``timestamp``."""
    if not 0 <= timestamp < 10**12:
        raise ValueError("timestamp must be Unix seconds between 0 and 999999999999")
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    raw_t = str(int(timestamp))
    signature = _hex_hmac(key, raw_t.encode("ascii") + b"." + bytes(body)).decode("ascii")
    return f"t={raw_t},v1={signature}"
