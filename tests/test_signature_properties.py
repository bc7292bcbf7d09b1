"""Property tests for the signature scheme: verify is total, sign/verify agree, tampering is caught."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from runinfra_webhooks.service.core.signature import MAX_HEADER_LENGTH, Outcome, Verification, sign, verify

NOW = 1_764_086_400
SECRET = b"whsec_property_secret"

secrets_st = st.lists(st.binary(max_size=40), max_size=3)
bodies = st.binary(max_size=512)
timestamps = st.integers(min_value=0, max_value=10**12 - 1)
# Header pieces biased towards the grammar so the fuzzer reaches the later checks.
elements = st.one_of(
    st.text(max_size=30),
    st.builds(lambda v: f"t={v}", st.one_of(timestamps.map(str), st.text(max_size=14))),
    st.builds(lambda v: f"v1={v}", st.one_of(st.text(alphabet="0123456789abcdef", max_size=64), st.text())),
    st.sampled_from(["", " ", "=", "t=", "v1=", "v0=x", "T=1", "V1=ab", "\x00", "t=0"]),
)
headers = st.one_of(st.none(), st.text(), st.lists(elements, max_size=12).map(",".join))


@settings(max_examples=400, deadline=None)
@given(headers, bodies, secrets_st, st.integers(-(2**40), 2**40), st.integers(-(2**63), 2**63))
def test_verify_never_raises_on_any_input(
    header: str | None, body: bytes, secrets: list[bytes], tolerance: int, now: int
) -> None:
    """Any header, body, secrets, tolerance and clock yield exactly one Verification."""
    result = verify(header, body, secrets, tolerance, now)
    assert isinstance(result, Verification)
    assert isinstance(result.outcome, Outcome)
    if result.secret_index is not None:
        assert result.outcome in (Outcome.OK, Outcome.TIMESTAMP_TOO_OLD, Outcome.TIMESTAMP_TOO_NEW)
        assert 0 <= result.secret_index < len(secrets)


@settings(max_examples=150, deadline=None)
@given(bodies, st.binary(max_size=40), timestamps, st.integers(0, 10**6), st.data())
def test_signed_header_verifies_ok_within_tolerance(
    body: bytes, secret: bytes, t: int, tolerance: int, data: st.DataObject
) -> None:
    """A header made by sign() verifies ok whenever |now - t| <= tolerance."""
    now = t + data.draw(st.integers(-tolerance, tolerance), label="skew")
    assert verify(sign(body, secret, t), body, [secret], tolerance, now) == Verification(Outcome.OK, 0, t)


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=256), st.data())
def test_any_single_byte_change_is_a_mismatch(body: bytes, data: st.DataObject) -> None:
    """Changing any one byte of the body gives signature_mismatch."""
    header = sign(body, SECRET, NOW)
    index = data.draw(st.integers(0, len(body) - 1), label="index")
    delta = data.draw(st.integers(1, 255), label="delta")
    tampered = bytearray(body)
    tampered[index] = (tampered[index] + delta) % 256
    assert verify(header, bytes(tampered), [SECRET], 300, NOW).outcome is Outcome.SIGNATURE_MISMATCH


junk = st.one_of(
    st.text(alphabet=st.characters(exclude_characters=",="), max_size=20),  # bare or empty elements
    st.builds(
        lambda k, v: f"{k}={v}",
        st.text(alphabet=st.characters(exclude_characters=",="), max_size=8).filter(
            lambda k: k.strip(" \t") not in ("t", "v1")
        ),
        st.text(alphabet=st.characters(exclude_characters=","), max_size=20),
    ),
)


@settings(max_examples=200, deadline=None)
@given(bodies, st.lists(junk, max_size=6), st.lists(junk, max_size=6), st.lists(junk, max_size=6))
def test_junk_and_unknown_keys_around_a_valid_signature_keep_it_ok(
    body: bytes, before: list[str], between: list[str], after: list[str]
) -> None:
    """Bare elements and unknown keys anywhere in the header do not change an ok result."""
    t_part, v1_part = sign(body, SECRET, NOW).split(",")
    header = ",".join([*before, t_part, *between, v1_part, *after])
    assert verify(header, body, [SECRET], 300, NOW).outcome is Outcome.OK


@settings(max_examples=50, deadline=None)
@given(bodies, st.integers(1, 2000), st.sampled_from(["y", "é", "\x00", ",", " "]))
def test_header_longer_than_limit_is_malformed(body: bytes, extra: int, filler: str) -> None:
    """A header over 8192 characters is malformed even when it carries a valid signature."""
    good = sign(body, SECRET, NOW) + ",x="
    header = good + filler * (MAX_HEADER_LENGTH - len(good) + extra)
    assert verify(header, body, [SECRET], 300, NOW).outcome is Outcome.MALFORMED_SIGNATURE
