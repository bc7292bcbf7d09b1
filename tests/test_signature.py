"""The signature scheme: the contract's vectors, signing, rotation and check order."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from runinfra_webhooks.service.core.signature import (
    MAX_HEADER_LENGTH,
    MAX_SIGNATURES,
    Outcome,
    Verification,
    sign,
    verify,
)

VECTORS = json.loads((Path(__file__).parent / "data" / "signature-vectors.json").read_text("utf-8"))
CASES: list[dict[str, Any]] = VECTORS["cases"]

NOW = 1_764_086_400
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "whsec_C2FVsBQIhrscChlQIMV5b5sSYspob7oD"
BODY = b'{"id":"evt_1","type":"deployment.ready","created":1764086400,"data":{}}'


def check(header: str | None, body: bytes = BODY, secrets: tuple[str, ...] = (SECRET,)) -> Verification:
    return verify(header, body, [s.encode() for s in secrets], 300, NOW)


def test_vector_file_holds_the_contracts_33_cases() -> None:
    """The copied vector file has all 33 cases, each expecting a known outcome."""
    assert len(CASES) == 33
    assert {case["expect"] for case in CASES} <= {o.value for o in Outcome}
    assert len({case["name"] for case in CASES}) == 33


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_verifies_contract_vector(case: dict[str, Any]) -> None:
    """Each contract vector yields its expected outcome and, where given, the matching secret index."""
    result = verify(
        case["header"],
        base64.b64decode(case["body_b64"]),
        [s.encode("utf-8") for s in case["secrets"]],
        case["tolerance"],
        case["now"],
    )
    assert result.outcome == case["expect"]
    if "matched_secret_index" in case:
        assert result.secret_index == case["matched_secret_index"]
    if case["expect"] not in ("ok", "timestamp_too_old", "timestamp_too_new"):
        assert result.secret_index is None


def test_sign_round_trips_through_verify() -> None:
    """A header made by sign() verifies ok with the same secret and reports t."""
    header = sign(BODY, SECRET, NOW)
    assert header.startswith(f"t={NOW},v1=")
    assert check(header) == Verification(Outcome.OK, 0, NOW)


def test_sign_accepts_bytes_and_str_secrets_alike() -> None:
    """A str secret is keyed by its UTF-8 bytes, prefix included."""
    assert sign(BODY, SECRET, NOW) == sign(BODY, SECRET.encode(), NOW)


def test_sign_reproduces_the_stripe_compatible_vector() -> None:
    """sign() produces exactly the contract's Stripe-compatible header."""
    case = next(c for c in CASES if c["name"] == "valid_stripe_compatible")
    assert sign(base64.b64decode(case["body_b64"]), case["secrets"][0], case["now"]) == case["header"]


@pytest.mark.parametrize("timestamp", [-1, 10**12])
def test_sign_rejects_timestamps_verify_would_call_malformed(timestamp: int) -> None:
    """sign() refuses timestamps outside the canonical 0..12-digit range."""
    with pytest.raises(ValueError, match="timestamp"):
        sign(BODY, SECRET, timestamp)


def test_reports_index_of_rotated_secret() -> None:
    """During rotation a signature made with the second secret reports secret index 1."""
    result = check(sign(BODY, OTHER, NOW), secrets=(SECRET, OTHER))
    assert result == Verification(Outcome.OK, 1, NOW)


def test_reports_first_secret_when_both_rotation_signatures_match() -> None:
    """A sender signing with old and new secret is matched by the first configured secret."""
    v_new = sign(BODY, OTHER, NOW).split(",")[1]
    header = f"{sign(BODY, SECRET, NOW)},{v_new}"
    assert check(header, secrets=(OTHER, SECRET)).secret_index == 0


def test_rejects_stale_forged_signature_as_mismatch_not_too_old() -> None:
    """A forged signature with an ancient t reports signature_mismatch: the clock is never revealed."""
    forged = f"t={NOW - 10_000},v1={'a' * 64}"
    assert check(forged) == Verification(Outcome.SIGNATURE_MISMATCH, None, NOW - 10_000)
    genuine = sign(BODY, SECRET, NOW - 10_000)
    assert check(genuine) == Verification(Outcome.TIMESTAMP_TOO_OLD, 0, NOW - 10_000)


def test_rejects_future_timestamp_beyond_tolerance_with_matched_index() -> None:
    """A genuine signature from too far in the future is too_new and still names its secret."""
    result = check(sign(BODY, OTHER, NOW + 301), secrets=(SECRET, OTHER))
    assert result == Verification(Outcome.TIMESTAMP_TOO_NEW, 1, NOW + 301)


def test_rejects_everything_when_no_secret_is_configured() -> None:
    """With an empty secret list nothing can match."""
    assert check(sign(BODY, SECRET, NOW), secrets=()).outcome is Outcome.SIGNATURE_MISMATCH


@pytest.mark.parametrize("header", ["", " ", " \t "])
def test_rejects_empty_or_blank_header_as_missing(header: str) -> None:
    """An empty (or whitespace-only, which HTTP strips to empty) header is missing_signature."""
    assert check(header).outcome is Outcome.MISSING_SIGNATURE


@pytest.mark.parametrize(
    "header",
    [
        ",,,",
        "t=,v1=00",
        "t=1٢3,v1=00",  # non-ASCII digit
        "t=123\n,v1=00",
        "t=-1,v1=00",
        f"t={NOW},t={NOW + 1},v1=00",
    ],
)
def test_rejects_malformed_timestamps(header: str) -> None:
    """Missing, empty, non-ASCII, signed or duplicated t is malformed_signature."""
    assert check(header).outcome is Outcome.MALFORMED_SIGNATURE


def test_accepts_exactly_max_signatures_and_rejects_one_more() -> None:
    """Eight v1 elements are allowed; a ninth makes the header malformed."""
    good = sign(BODY, SECRET, NOW)
    padding = ",".join([f"v1={'0' * 64}"] * (MAX_SIGNATURES - 1))
    assert check(f"{good},{padding}").outcome is Outcome.OK
    assert check(f"{good},{padding},v1=00").outcome is Outcome.MALFORMED_SIGNATURE


def test_accepts_header_of_exactly_max_length() -> None:
    """A header of exactly 8192 characters is still parsed; one more is malformed."""
    good = sign(BODY, SECRET, NOW) + ",x="
    header = good + "y" * (MAX_HEADER_LENGTH - len(good))
    assert check(header).outcome is Outcome.OK
    assert check(header + "y").outcome is Outcome.MALFORMED_SIGNATURE


def test_rejects_non_ascii_and_nul_signatures_without_raising() -> None:
    """Odd v1 values (non-ASCII, NUL, lone surrogate) simply never match."""
    for value in ("é" * 64, "\x00" * 64, "\ud800", ""):
        assert check(f"t={NOW},v1={value}").outcome is Outcome.SIGNATURE_MISMATCH


def test_accepts_tolerance_boundaries_inclusively() -> None:
    """|now - t| == tolerance is still ok in both directions."""
    assert check(sign(BODY, SECRET, NOW - 300)).outcome is Outcome.OK
    assert check(sign(BODY, SECRET, NOW + 300)).outcome is Outcome.OK


def test_outcome_values_are_the_contract_codes() -> None:
    """The outcome enum is exactly the contract's seven codes."""
    assert [o.value for o in Outcome] == VECTORS["expect_values"]
