"""The one place that decides: try again later, or dead-letter.

arq only retries a job that raises ``Retry``; everything else would be a silent failure. So every handler
outcome is mapped here, by exception type, to a ``Decision``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from runinfra_webhooks.handlers import deployments
from runinfra_webhooks.handlers.errors import PermanentError, TransientError
from runinfra_webhooks.service.gateway.backoff import backoff_delay
from runinfra_webhooks.service.gateway.client import GatewayPermanentError, GatewayTransientError
from runinfra_webhooks.service.storage import batch_claims, records
from runinfra_webhooks.service.storage.redis_errors import classify, script_names

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


# A Lua runtime error names the script only by its SHA-1: the scripts a job runs, by name.
SCRIPT_NAMES = script_names({
    "records.start": records.START_SCRIPT, "records.finish": records.FINISH_SCRIPT,
    "records.add_request_id": records.ADD_REQUEST_ID_SCRIPT, "records.handler_done": records.HANDLER_DONE_SCRIPT,
    "deployments.apply": deployments.APPLY_SCRIPT,
    "corpus.claim": batch_claims.CLAIM_SCRIPT, "corpus.release": batch_claims.RELEASE_SCRIPT,
})


def decide(exc: BaseException, *, attempt: int, max_attempts: int, base: float, cap: float,
           rng: random.Random | None = None) -> Decision:
    error = _describe(exc)
    if isinstance(exc, GatewayPermanentError):
        return Decision(False, 0.0, f"gateway_{exc.error_type or exc.code}", error)
    if isinstance(exc, PermanentError):
        return Decision(False, 0.0, exc.code, error)
    # Redis busy, full, loading, read-only or failing over: later. One of our scripts refusing its input or
    # failing: the same input fails again, so at once (the scripts write nothing before they can finish).
    failure = classify(exc, SCRIPT_NAMES)
    if failure is not None and not failure.transient:
        return Decision(False, 0.0, failure.code, error)
    if attempt >= max_attempts:
        ours = isinstance(exc, TransientError | GatewayTransientError)
        return Decision(False, 0.0, "attempts_exhausted" if ours else type(exc).__name__, error)
    retry_after = exc.retry_after if isinstance(exc, GatewayTransientError | TransientError) else None
    return Decision(True, backoff_delay(attempt, base=base, cap=cap, retry_after=retry_after, rng=rng), "", error)
