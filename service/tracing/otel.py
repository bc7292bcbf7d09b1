"""The OpenTelemetry side of ``service.tracing``: SDK, OTLP/HTTP exporter, contrib instrumentations.

Imported only when the OTEL_* variables ask for tracing. The exporter, sampler, batch processor and resource
attributes read their own standard variables (OTEL_EXPORTER_OTLP_*, OTEL_TRACES_SAMPLER, OTEL_BSP_*,
OTEL_RESOURCE_ATTRIBUTES); only the service name gets a default of ours.

Instrumented: the server span of each ASGI request (the contrib ASGI middleware, which takes an incoming
``traceparent`` as parent) and every outgoing httpx request in the worker (the contrib httpx instrumentation,
which sends ``traceparent`` to the gateway). redis-py is deliberately not instrumented: the receiver and the
workers coalesce concurrent deliveries' scripts into one round trip, so a redis span would belong to
whichever delivery happened to flush the batch and mislead more than it tells.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.middleware import Middleware

from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.records import EventRecord
from runinfra_webhooks.service.tracing import LogProcessor, Role, Tracing

__all__ = ["OtelTracing"]

# Probes and scrapes are not deliveries: tracing them would bury the traces that matter.
_EXCLUDED_URLS = "/healthz,/readyz,/metrics"
_SCOPE = "runinfra_webhooks"


class OtelTracing(Tracing):
    enabled = True

    def __init__(self, *, role: Role, service_name: str) -> None:
        self._role = role
        self._service_name = service_name
        self._provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        # Global, so the contrib instrumentations and any handler's own spans use the same provider.
        trace.set_tracer_provider(self._provider)
        self._tracer = self._provider.get_tracer(_SCOPE)
        self._propagator = TraceContextTextMapPropagator()
        if role == "worker":
            from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

            HTTPXClientInstrumentor().instrument(tracer_provider=self._provider)

    def describe(self) -> dict[str, str]:
        return {"tracing": "otlp", "service_name": self._service_name}

    def middleware(self) -> list[Middleware]:
        return [Middleware(OpenTelemetryMiddleware, excluded_urls=_EXCLUDED_URLS, tracer_provider=self._provider,
                           # one span per request, not three (the body's receive and the answer's send)
                           exclude_spans=["receive", "send"])]

    def log_processors(self) -> list[LogProcessor]:
        return [_add_trace_ids]

    def current_traceparent(self) -> str:
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)
        return carrier.get("traceparent", "")

    def _span_context(self, traceparent: str) -> trace.SpanContext:
        return trace.get_current_span(self._propagator.extract({"traceparent": traceparent})).get_span_context()

    @contextlib.contextmanager
    def attempt(self, record: EventRecord, *, job_id: str) -> Iterator[None]:
        if record.generation > 0 and record.replay_traceparent:
            parent, linked = record.replay_traceparent, record.traceparent
        else:
            parent, linked = record.traceparent, ""
        # An empty Context, not the current one: an attempt of an untraced delivery starts its own trace.
        ctx = self._propagator.extract({"traceparent": parent}) if parent else otel_context.Context()
        links = []
        if linked and (first := self._span_context(linked)).is_valid:
            links.append(Link(first, {"runinfra.link": "replay_of"}))
        attributes: dict[str, str | int] = {
            "messaging.system": "arq", "messaging.operation.type": "process",
            "messaging.destination.name": keys.ARQ_QUEUE, "messaging.message.id": job_id,
            "runinfra.event.id": record.event_id, "runinfra.event.type": record.type,
            "runinfra.generation": record.generation, "runinfra.attempt": record.attempts,
        }
        with self._tracer.start_as_current_span(f"process {record.type}", context=ctx, kind=SpanKind.CONSUMER,
                                                links=links, attributes=attributes):
            yield

    def replay_traceparent(self, first_traceparent: str, event_id: str) -> str:
        links = []
        if first_traceparent and (first := self._span_context(first_traceparent)).is_valid:
            links.append(Link(first, {"runinfra.link": "replay_of"}))
        with self._tracer.start_as_current_span("replay", context=otel_context.Context(), kind=SpanKind.PRODUCER,
                                                links=links, attributes={"runinfra.event.id": event_id}):
            return self.current_traceparent()

    def shutdown(self) -> None:
        self._provider.shutdown()


def _add_trace_ids(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict["trace_id"] = format(span_context.trace_id, "032x")
        event_dict["span_id"] = format(span_context.span_id, "016x")
    return event_dict
