"""Retry delays: full-jitter exponential backoff and ``Retry-After`` parsing. Pure; ``now`` and the RNG are
passed in.

Policy, decided once here: when the server sent ``Retry-After`` it wins over the jitter (the server knows
its own load better than our random draw), but it is still capped at ``cap`` so a hostile or broken header
cannot park a job for a day.
"""

from __future__ import annotations

import math
import random
import re
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = ["backoff_delay", "parse_retry_after"]

# 2**64 * any sane base is far above any cap; clamping the exponent keeps huge attempt numbers finite.
_MAX_EXPONENT = 64
_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_RNG = random.Random()  # noqa: S311 - retry jitter, not cryptography


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = the wait after the first failure).

    Without ``retry_after``: full jitter, ``uniform(0, min(cap, base * 2**(attempt - 1)))``.
    With ``retry_after``: ``min(retry_after, cap)`` (never negative); the jitter is not drawn.
    """
    if attempt < 1:
        msg = f"attempt must be >= 1, got {attempt}"
        raise ValueError(msg)
    if retry_after is not None:
        return max(0.0, min(retry_after, cap))
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    return (rng or _RNG).uniform(0.0, ceiling)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value, or None when absent or unusable.

    Accepts delta-seconds (``"120"``; a decimal fraction is tolerated) and HTTP-dates
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``, relative to ``now`` in Unix seconds; a date in the past means
    ``0.0``). Negative numbers, non-finite values and anything else are None.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" zone: RFC 5322 says UTC with unknown local offset
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)
