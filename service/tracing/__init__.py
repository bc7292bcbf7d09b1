"""Traces of one delivery from the webhook POST through the queue to each gateway call (OpenTelemetry).

Configured only by the standard OTEL_* variables, read once when a process starts: with
OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set (and OTEL_SDK_DISABLED not true), the
process exports spans over OTLP/HTTP protobuf; OTEL_SERVICE_NAME defaults to ``runinfra-webhooks-<role>``.
Without them ``setup_tracing`` returns ``NO_TRACING``, whose hooks do nothing and which imports nothing of
OpenTelemetry, so an untraced receiver pays nothing for this module.

arq jobs carry no headers, so the trace crosses the queue in the event record: the receiver stores its
server span's ``traceparent`` with the record in the same atomic ingest step, and each job attempt starts its
consumer span from the record it loads. A retry, a re-run after a worker crash and a job the sweep
re-created all read the same record, so they all land in the delivery's trace. A replay stores a new trace
context in ``replay_traceparent``; its attempts go there, linked to the delivery's trace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import Any, Literal

from starlette.middleware import Middleware

from runinfra_webhooks.service.core.trace_context import new_traceparent
from runinfra_webhooks.service.storage.records import EventRecord

__all__ = ["NO_TRACING", "Role", "Tracing", "setup_tracing", "tracing_requested"]

Role = Literal["receiver", "worker", "console", "cli", "gateway-stub"]
LogProcessor = Callable[[Any, str, MutableMapping[str, Any]], MutableMapping[str, Any]]

_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class Tracing:
    """No tracing: every hook is a no-op. ``setup_tracing`` returns the OpenTelemetry-backed one when asked."""

    enabled = False

    def describe(self) -> dict[str, str]:
        """What a start-up log line says about tracing."""
        return {"tracing": "off"}

    def middleware(self) -> list[Middleware]:
        """ASGI middleware that opens the server span of each request (outermost first)."""
        return []

    def log_processors(self) -> list[LogProcessor]:
        """structlog processors that add the current trace and span ids to each line."""
        return []

    def current_traceparent(self) -> str:
        """The W3C ``traceparent`` of the current span, ``""`` when nothing is traced."""
        return ""

    def attempt(self, record: EventRecord, *, job_id: str) -> AbstractContextManager[None]:
        """The consumer span of one job attempt of ``record`` (as loaded for it): child of the delivery's span,
        or for a replayed generation of the replay's, linked to the delivery's trace."""
        return contextlib.nullcontext()

    def replay_traceparent(self, first_traceparent: str, event_id: str) -> str:
        """The trace context a replay starts: new, sampled, with no span behind it when nothing is traced."""
        return new_traceparent()

    def shutdown(self) -> None:
        """Flush what is buffered (also runs at interpreter exit)."""


NO_TRACING = Tracing()


class _Unavailable(Tracing):
    """Tracing was asked for but the ``otel`` extra is not installed: nothing is traced, start-up says so."""

    def __init__(self, reason: str) -> None:
        self._reason = reason

    def describe(self) -> dict[str, str]:
        return {"tracing": "unavailable", "reason": self._reason}


def tracing_requested(environ: Mapping[str, str]) -> bool:
    """True when the standard variables ask for trace export."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(environ.get(name, "").strip() for name in _ENDPOINT_VARIABLES)


def setup_tracing(role: Role, environ: Mapping[str, str]) -> Tracing:
    """Set up this process's tracing once, at its entry point. ``environ`` decides whether to trace and the
    default service name; the SDK reads its own variables (endpoint, headers, sampler...) from
    ``os.environ``, so outside tests pass ``os.environ``."""
    if not tracing_requested(environ):
        return NO_TRACING
    try:
        from runinfra_webhooks.service.tracing.otel import OtelTracing
    except ImportError as exc:  # the optional extra is missing
        return _Unavailable(f"install runinfra-webhooks[otel] ({exc.name or 'opentelemetry'} is missing)")
    service_name = environ.get("OTEL_SERVICE_NAME", "").strip() or f"runinfra-webhooks-{role}"
    return OtelTracing(role=role, service_name=service_name)
