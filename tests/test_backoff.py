"""Retry delays: full jitter, the cap, Retry-After winning, and Retry-After parsing."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from runinfra_webhooks.service.gateway.backoff import backoff_delay, parse_retry_after

NOW = 1_700_000_000.0


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8])
def test_full_jitter_stays_between_zero_and_exponential_ceiling(attempt: int) -> None:
    """Each delay is drawn from [0, min(cap, base * 2**(attempt-1))] and actually spreads over it."""
    rng = random.Random(attempt)
    ceiling = min(10.0, 0.5 * 2 ** (attempt - 1))
    delays = [backoff_delay(attempt, base=0.5, cap=10.0, rng=rng) for _ in range(500)]
    assert all(0.0 <= d <= ceiling for d in delays)
    assert max(delays) > 0.8 * ceiling
    assert min(delays) < 0.2 * ceiling


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    """The same seed gives the same delays (tests can pin them)."""
    first = [backoff_delay(3, base=1, cap=60, rng=random.Random(42)) for _ in range(3)]
    second = [backoff_delay(3, base=1, cap=60, rng=random.Random(42)) for _ in range(3)]
    assert first == second


@pytest.mark.parametrize("attempt", [30, 1_000, 100_000])
def test_huge_attempt_numbers_stay_under_the_cap(attempt: int) -> None:
    """No overflow however many attempts were made: the cap bounds the delay."""
    assert 0.0 <= backoff_delay(attempt, base=0.5, cap=60.0, rng=random.Random(1)) <= 60.0


def test_retry_after_wins_over_jitter() -> None:
    """When the server names a wait, that wait is used, not a random draw."""
    assert backoff_delay(1, base=0.5, cap=60.0, retry_after=7.0) == 7.0
    assert backoff_delay(6, base=0.5, cap=60.0, retry_after=0.0) == 0.0


def test_retry_after_is_capped() -> None:
    """A Retry-After beyond the cap is cut to the cap."""
    assert backoff_delay(1, base=0.5, cap=60.0, retry_after=3_600.0) == 60.0


@pytest.mark.parametrize("attempt", [0, -1])
def test_rejects_attempt_below_one(attempt: int) -> None:
    """Attempts count from 1."""
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(attempt, base=0.5, cap=60.0)


@pytest.mark.parametrize(("value", "expected"), [("120", 120.0), (" 3 ", 3.0), ("0", 0.0), ("1.5", 1.5)])
def test_parses_delta_seconds(value: str, expected: float) -> None:
    """Delta-seconds are read as seconds."""
    assert parse_retry_after(value, NOW) == expected


def test_parses_http_date_relative_to_now() -> None:
    """An HTTP-date is the seconds from now until then."""
    when = datetime.fromtimestamp(NOW + 90, tz=UTC)
    assert parse_retry_after(format_datetime(when, usegmt=True), NOW) == pytest.approx(90.0)


def test_http_date_without_zone_is_utc() -> None:
    """The RFC 5322 '-0000' zone is read as UTC."""
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:50 -0000", NOW) == pytest.approx(30.0)


def test_http_date_in_the_past_means_now() -> None:
    """A date already gone is a zero wait, not a negative one."""
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW) == 0.0


@pytest.mark.parametrize(
    "value", [None, "", "  ", "-5", "soon", "1e3", "nan", "inf", "5 s", "Wed, 99 Oct 2015 07:28:00 GMT", "9" * 400]
)
def test_rejects_garbage_and_negative_values(value: str | None) -> None:
    """Anything that is not a non-negative finite delta or an HTTP-date is None."""
    assert parse_retry_after(value, NOW) is None
