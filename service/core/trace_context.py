"""W3C trace context values as the event record keeps them: pure functions, no OpenTelemetry needed.

The record stores a ``traceparent`` string (``00-<32 hex trace id>-<16 hex span id>-<2 hex flags>``) so the
trace survives the queue, retries, worker crashes and the sweep with the record itself. An empty string
means the delivery was not traced.
"""

from __future__ import annotations

import re
import secrets

__all__ = ["new_traceparent", "trace_id_of"]

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_INVALID_TRACE_ID = "0" * 32
_INVALID_SPAN_ID = "0" * 16


def trace_id_of(traceparent: str) -> str | None:
    """The trace id of a valid version-00 ``traceparent``, else ``None`` (empty, malformed, all-zero ids)."""
    m = _TRACEPARENT.match(traceparent)
    if m is None or m.group(1) == _INVALID_TRACE_ID or m.group(2) == _INVALID_SPAN_ID:
        return None
    return m.group(1)


def new_traceparent() -> str:
    """A fresh, sampled trace context: what a replay starts when the replaying process traces nothing itself."""
    trace_id = _INVALID_TRACE_ID
    while trace_id == _INVALID_TRACE_ID:
        trace_id = secrets.token_hex(16)
    span_id = _INVALID_SPAN_ID
    while span_id == _INVALID_SPAN_ID:
        span_id = secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01"
