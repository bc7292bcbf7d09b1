"""The one place that decides: try again later, or dead-letter (contract §7, issue #3).

arq only retries a job that raises ``Retry``; everything else would be a silent failure. So every handler
outcome is mapped here, by exception type, to a ``Decision``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from runinfra_webhooks.handlers.errors import PermanentError, TransientError
from runinfra_webhooks.service.gateway.backoff import backoff_delay
from runinfra_webhooks.service.gateway.client import GatewayPermanentError, GatewayTransientError

__all__ = ["Decision", "decide"]


@dataclass(frozen=True, slots=True)
class Decision:
    retry: bool
    delay: float  # seconds before the next attempt (when retry)
    reason: str  # dead-letter reason code (when not retry)
    error: str  # one line for the event's last_error; never a secret


def _describe(exc: BaseException) -> str:
    if isinstance(exc, GatewayPermanentError | GatewayTransientError):
        parts = [
            exc.code,
            f"status={exc.status}" if exc.status else "",
            f"type={exc.error_type}" if exc.error_type else "",
            f"request_id={exc.request_id}" if exc.request_id else "",
        ]
        return " ".join(p for p in parts if p)
    if not isinstance(exc, PermanentError | TransientError):
        # Someone else's exception: its arguments may hold anything (a payload, a credential), so only its type.
        return type(exc).__name__
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def decide(exc: BaseException, *, attempt: int, max_attempts: int, base: float, cap: float,
           rng: random.Random | None = None) -> Decision:
    error = _describe(exc)
    if isinstance(exc, GatewayPermanentError):
        return Decision(False, 0.0, f"gateway_{exc.error_type or exc.code}", error)
    if isinstance(exc, PermanentError):
        return Decision(False, 0.0, exc.code, error)
    if attempt >= max_attempts:
        ours = isinstance(exc, TransientError | GatewayTransientError)
        return Decision(False, 0.0, "attempts_exhausted" if ours else type(exc).__name__, error)
    retry_after = exc.retry_after if isinstance(exc, GatewayTransientError | TransientError) else None
    return Decision(True, backoff_delay(attempt, base=base, cap=cap, retry_after=retry_after, rng=rng), "", error)
