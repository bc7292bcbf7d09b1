"""The gateway stub's in-memory state: idempotency records, charges, received calls and injected faults.

Everything here runs on the stub's one event loop, so plain dicts are enough: no method awaits between
reading and writing. ``reset()`` bumps an epoch so work still in flight from before a reset cannot write
into the fresh state.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

__all__ = ["TIMEOUT", "Fault", "FaultPlan", "StoredResponse", "StubState"]

T = TypeVar("T")

TIMEOUT: Final = "timeout"
Fault = int | Literal["timeout"]
ClaimOutcome = Literal["run", "in_flight", "reused"]

_MAX_CALLS = 10_000
_ANY_ROUTE = "*"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: bytes
    content_type: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(slots=True)
class _Entry:
    body_hash: str
    response: StoredResponse | None = None  # None while the first request is still in flight


@dataclass(slots=True)
class FaultPlan:
    """Scripted outcomes (consumed in order, one per request), then random ones drawn from ``rates``."""

    script: deque[Fault] = field(default_factory=deque)
    rates: tuple[tuple[Fault, float], ...] = ()
    retry_after: float | None = None
    latency: float | None = None
    timeout_seconds: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    ends: float | None = None  # time.monotonic() after which the plan no longer applies

    @classmethod
    def parse(cls, spec: Any) -> tuple[str, FaultPlan]:
        """(route, plan) from the ``POST /_stub/faults`` body; ``ValueError`` names the bad field."""
        if not isinstance(spec, dict):
            msg = "body must be a JSON object"
            raise ValueError(msg)
        route = spec.get("route", _ANY_ROUTE)
        if not isinstance(route, str) or not route:
            msg = "route must be a path like /v1/embeddings or *"
            raise ValueError(msg)
        script = spec.get("script", [])
        if not isinstance(script, list):
            msg = "script must be a list"
            raise ValueError(msg)
        rates = spec.get("rates", {})
        if not isinstance(rates, dict):
            msg = "rates must be an object"
            raise ValueError(msg)
        parsed_rates = tuple((_fault(k), _number(v, "rates", upper=1.0)) for k, v in rates.items())
        if sum(p for _, p in parsed_rates) > 1.0:
            msg = "rates must add up to at most 1"
            raise ValueError(msg)
        plan = cls(
            script=deque(_fault(item) for item in script),
            rates=parsed_rates,
            retry_after=_optional_number(spec.get("retry_after"), "retry_after"),
            latency=_optional_number(spec.get("latency"), "latency"),
            timeout_seconds=_number(spec.get("timeout_seconds", 30.0), "timeout_seconds"),
            rng=random.Random(spec.get("seed")),  # noqa: S311 - fault injection, not cryptography
        )
        duration = _optional_number(spec.get("duration"), "duration")
        if duration is not None:
            plan.ends = time.monotonic() + duration
        return route, plan

    @property
    def over(self) -> bool:
        return self.ends is not None and time.monotonic() >= self.ends

    def draw(self) -> Fault | None:
        """The next injected outcome, or None to let the request through (a scripted 2xx does that too)."""
        fault: Fault | None = None
        if self.script:
            fault = self.script.popleft()
        else:
            roll = self.rng.random()
            for candidate, probability in self.rates:
                if roll < probability:
                    fault = candidate
                    break
                roll -= probability
        return None if isinstance(fault, int) and 200 <= fault < 300 else fault


def _fault(value: Any) -> Fault:
    if value == TIMEOUT:
        return TIMEOUT
    try:
        status = int(value)
    except (TypeError, ValueError):
        status = 0
    if isinstance(value, bool) or not 100 <= status <= 599:
        msg = f"fault {value!r} is neither an HTTP status nor 'timeout'"
        raise ValueError(msg)
    return status


def _number(value: Any, name: str, *, upper: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        msg = f"{name} must be a non-negative number"
        raise ValueError(msg)
    if upper is not None and value > upper:
        msg = f"{name} must be at most {upper}"
        raise ValueError(msg)
    return float(value)


def _optional_number(value: Any, name: str) -> float | None:
    return None if value is None else _number(value, name)


class StubState:
    def __init__(self, *, latency: float) -> None:
        self.default_latency = latency
        self.epoch = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self._in_flight: Counter[str] = Counter()  # not reset: requests still being answered would go negative
        self.reset()

    def reset(self) -> None:
        self.epoch += 1
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._faults: dict[str, FaultPlan] = {}
        self.calls: deque[dict[str, Any]] = deque(maxlen=_MAX_CALLS)
        self.total = 0
        self.by_key: Counter[str] = Counter()
        self.by_route: Counter[str] = Counter()

    # --- faults -----------------------------------------------------------------------------------
    def set_faults(self, route: str, plan: FaultPlan) -> None:
        self._faults[route] = plan

    def plan_for(self, route: str) -> FaultPlan | None:
        for name in (route, _ANY_ROUTE):
            plan = self._faults.get(name)
            if plan is not None and plan.over:
                del self._faults[name]
                plan = None
            if plan is not None:
                return plan
        return None

    # --- calls in flight --------------------------------------------------------------------------
    def arrive(self, route: str) -> int:
        """A request of ``route`` came in; how many of that route are in flight now, itself included."""
        self._in_flight[route] += 1
        return self._in_flight[route]

    def leave(self, route: str) -> None:
        self._in_flight[route] -= 1

    def latency_for(self, route: str) -> float:
        plan = self.plan_for(route)
        return plan.latency if plan is not None and plan.latency is not None else self.default_latency

    # --- idempotency and charges ------------------------------------------------------------------
    def claim(self, route: str, key: str, body_hash: str) -> ClaimOutcome | StoredResponse:
        """Decide what a keyed request gets: run the work, a conflict, a reuse error, or the stored reply."""
        entry = self._entries.get((route, key))
        if entry is None:
            self._entries[(route, key)] = _Entry(body_hash)
            return "run"
        if entry.body_hash != body_hash:
            return "reused"
        return entry.response if entry.response is not None else "in_flight"

    def complete(self, route: str, key: str | None, epoch: int, response: StoredResponse | None) -> None:
        """Record the work's result: a 2xx is charged once and stored; anything else frees the key."""
        if epoch != self.epoch:
            return
        ok = response is not None and response.ok
        if key is not None:
            if ok:
                self._entries[(route, key)].response = response
            else:
                self._entries.pop((route, key), None)
        if ok:
            self.total += 1
            self.by_route[route] += 1
            if key is not None:
                self.by_key[key] += 1

    def charges(self) -> dict[str, Any]:
        return {"total": self.total, "by_key": dict(self.by_key), "by_route": dict(self.by_route)}

    # --- background work --------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` as a task the stub holds on to, so a disconnecting client cannot cancel it."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def cancel_tasks(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
