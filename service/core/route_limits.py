"""Per-route limits toward the gateway, parsed from the settings. Pure: no Redis, no clock.

``RUNINFRA_GATEWAY_RATE_LIMIT`` is a comma list of ``<route>=<n>/s`` or ``<route>=<n>/m``;
``RUNINFRA_GATEWAY_CONCURRENCY`` a comma list of ``<route>=<n>``. A route is a gateway path such as
``/audio/speech``. A rate becomes the minimum spacing between two calls, in whole milliseconds rounded up
(GCRA without burst): ``10/s`` is one call every 100 ms, so any one-second window holds at most 11. The
finest spacing is 1 ms: a rate above ``1000/s`` acts as ``1000/s``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["RouteLimits", "parse_concurrency", "parse_rate_limits", "route_limits"]

_ROUTE = re.compile(r"/[A-Za-z0-9._~-]+(?:/[A-Za-z0-9._~-]+)*")
_RATE = re.compile(r"([0-9]+(?:\.[0-9]+)?)/([sm])")
_COUNT = re.compile(r"[1-9][0-9]{0,5}")
_PER_MS = {"s": 1000, "m": 60_000}


@dataclass(frozen=True, slots=True)
class RouteLimits:
    """One route's limits: ``interval_ms`` between calls (0 = no rate limit), ``concurrency`` (0 = none)."""

    interval_ms: int = 0
    concurrency: int = 0

    @property
    def limited(self) -> bool:
        return self.interval_ms > 0 or self.concurrency > 0


def _entries(text: str, what: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        route, sep, value = part.partition("=")
        route, value = route.strip().rstrip("/") or route.strip(), value.strip()
        if not sep or not _ROUTE.fullmatch(route):
            msg = f"{part!r} is not <route>={what} with a route like /audio/speech"
            raise ValueError(msg)
        if route in seen:
            msg = f"route {route} is given twice"
            raise ValueError(msg)
        seen.add(route)
        out.append((route, value))
    return out


def parse_rate_limits(text: str) -> dict[str, int]:
    """Route -> milliseconds between two calls. ``ValueError`` names the bad entry."""
    out: dict[str, int] = {}
    for route, value in _entries(text, "<n>/s or <n>/m"):
        match = _RATE.fullmatch(value)
        count = float(match.group(1)) if match else 0.0
        if match is None or count <= 0 or count > 100_000:
            msg = f"{route}={value}: a rate is <n>/s or <n>/m with 0 < n <= 100000"
            raise ValueError(msg)
        out[route] = max(1, math.ceil(_PER_MS[match.group(2)] / count))
    return out


def parse_concurrency(text: str) -> dict[str, int]:
    """Route -> the most calls in flight at once, across all workers. ``ValueError`` names the bad entry."""
    out: dict[str, int] = {}
    for route, value in _entries(text, "<n>"):
        if not _COUNT.fullmatch(value):
            msg = f"{route}={value}: concurrency is a whole number from 1 to 999999"
            raise ValueError(msg)
        out[route] = int(value)
    return out


def route_limits(rate: str, concurrency: str) -> dict[str, RouteLimits]:
    """Both settings merged per route."""
    rates, slots = parse_rate_limits(rate), parse_concurrency(concurrency)
    return {r: RouteLimits(rates.get(r, 0), slots.get(r, 0)) for r in sorted(rates.keys() | slots.keys())}
