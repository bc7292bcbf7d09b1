"""A small OTLP/HTTP trace collector for tests: real processes export to it, tests read the spans back.

It serves ``POST /v1/traces`` (protobuf ``ExportTraceServiceRequest``, optionally gzip-compressed) on a free
port in a background thread and keeps every span with its service name::

    with otlp_collector() as collector:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.endpoint
        ...
        spans = collector.wait_for(lambda spans: ..., what="the worker's span")
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

__all__ = ["Collector", "SpanRecord", "otlp_collector"]


@dataclass(frozen=True)
class SpanRecord:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    kind: str  # "SERVER", "CLIENT", "CONSUMER", "PRODUCER", "INTERNAL"
    attributes: dict[str, Any] = field(default_factory=dict)
    links: tuple[tuple[str, str], ...] = ()  # (trace id, span id)
    status: str = "UNSET"


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind in {"string_value", "int_value", "bool_value", "double_value"} else str(v)


def _decode(raw: bytes) -> list[SpanRecord]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(raw)
    out = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                out.append(SpanRecord(
                    service=str(resource.get("service.name", "")), name=s.name, trace_id=s.trace_id.hex(),
                    span_id=s.span_id.hex(), parent_span_id=s.parent_span_id.hex(),
                    kind=ProtoSpan.SpanKind.Name(s.kind).removeprefix("SPAN_KIND_"),
                    attributes={a.key: _value(a.value) for a in s.attributes},
                    links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in s.links),
                    status=s.status.StatusCode.Name(s.status.code).removeprefix("STATUS_CODE_"),
                ))
    return out


class Collector:
    def __init__(self, port: int) -> None:
        self.endpoint = f"http://127.0.0.1:{port}"
        self._spans: list[SpanRecord] = []
        self._lock = threading.Lock()
        self.requests = 0

    def add(self, spans: list[SpanRecord]) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.requests += 1

    def spans(self) -> list[SpanRecord]:
        with self._lock:
            return list(self._spans)

    def wait_for(self, predicate: Callable[[list[SpanRecord]], bool], *, what: str, timeout: float = 20
                 ) -> list[SpanRecord]:
        """Poll until ``predicate(all spans so far)``; return them; fail the test past ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                listing = "\n".join(f"  {s.service} {s.kind} {s.name} {s.trace_id}/{s.span_id}<-{s.parent_span_id}"
                                    for s in spans)
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; spans:\n{listing}")
            time.sleep(0.05)


@contextmanager
def otlp_collector() -> Iterator[Collector]:
    holder: dict[str, Collector] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.headers.get("content-encoding") == "gzip":
                raw = gzip.decompress(raw)
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            holder["c"].add(_decode(raw))
            body = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder["c"] = Collector(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder["c"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
