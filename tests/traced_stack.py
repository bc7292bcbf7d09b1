"""Helpers for tests of traces across real processes: environment, a traced gateway emulator, span queries."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.otlp_collector import Collector, SpanRecord
from tests.processes import Proc, stack_env, wait_until
from tests.redis_server import free_port
from tests.stubserver import StubServer

STUB_SERVICE = "gateway-emulator"


def traced_env(redis_url: str, stub_url: str, tmp: Path, collector: Collector, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in stack_env(redis_url, stub_url, tmp / "artifacts", **extra).items()
           if not k.startswith("OTEL_")}
    # Each gateway failure is a job attempt of its own (no inline retry), and spans leave within 50 ms.
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint, OTEL_BSP_SCHEDULE_DELAY="50",
               RUNINFRA_GATEWAY_MAX_ATTEMPTS="1")
    return env


def start_stub(env: dict[str, str], log: Path) -> tuple[Proc, StubServer]:
    port = free_port()
    proc = Proc(["gateway-stub", "--port", str(port)], {**env, "OTEL_SERVICE_NAME": STUB_SERVICE}, log)
    stub = StubServer(root_url=f"http://127.0.0.1:{port}", api_key="sk-stub")

    def up() -> bool:
        try:
            stub.reset()
        except httpx.HTTPError:
            return False
        return True

    wait_until(up, timeout=20, what="gateway emulator")
    return proc, stub


def server_span(spans: list[SpanRecord], event_trace: str | None = None) -> list[SpanRecord]:
    return [s for s in spans if s.service == "runinfra-webhooks-receiver" and s.kind == "SERVER"
            and (event_trace is None or s.trace_id == event_trace)]


def consumer_spans(spans: list[SpanRecord], event_id: str) -> list[SpanRecord]:
    found = [s for s in spans if s.kind == "CONSUMER" and s.attributes.get("runinfra.event.id") == event_id]
    return sorted(found, key=lambda s: (s.attributes["runinfra.generation"], s.attributes["runinfra.attempt"]))


def children(spans: list[SpanRecord], parent: SpanRecord, kind: str) -> list[SpanRecord]:
    return [s for s in spans if s.kind == kind and s.trace_id == parent.trace_id and s.parent_span_id == parent.span_id]
