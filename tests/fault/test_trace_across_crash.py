"""A worker SIGKILLed in the middle of a gateway call: the re-run attempt stays in the delivery's trace.

The killed attempt's own spans die with its process (they were never exported); what must hold is that
the attempt arq re-runs after the in-progress key expires (20 s here) reads the trace context from the
record and continues the delivery's trace, and that both gateway calls carried that trace's traceparent.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.builders import example_event, signed_delivery
from tests.fault.harness import report
from tests.otlp_collector import otlp_collector
from tests.processes import Proc, started_receiver
from tests.redis_server import RedisServer
from tests.traced_stack import children, consumer_spans, server_span, start_stub, traced_env

pytestmark = pytest.mark.fault

SPEECH = "/v1/audio/speech"


def test_an_attempt_rerun_after_a_worker_crash_continues_the_delivery_trace(tmp_path: Path) -> None:
    """SIGKILL mid-call, a new worker re-runs the job: its consumer span is a child of the POST's span."""
    with RedisServer(tmp_path, appendonly=True) as server, otlp_collector() as collector:
        stub_proc, stub = start_stub(traced_env(server.url, "http://unused", tmp_path, collector),
                                     tmp_path / "stub.log")
        env = traced_env(server.url, stub.base_url, tmp_path, collector)
        event = example_event("transcription.completed")
        first = Proc(["worker"], env, tmp_path / "worker-1.log")
        second: Proc | None = None
        try:
            stub.set_faults(route=SPEECH, latency=3.0)  # long enough to kill the worker inside the call
            with started_receiver(env, tmp_path / "receiver.log") as (url, _):
                body, headers = signed_delivery(event)
                assert httpx.post(url + "/webhooks/runinfra", content=body, headers=headers).status_code == 202
                stub.wait_for(lambda s: any(c["route"] == SPEECH for c in s.calls()), timeout=20)
                first.kill()
                killed_at = time.monotonic()
                stub.set_faults(route=SPEECH, latency=0)
                second = Proc(["worker"], env, tmp_path / "worker-2.log")
                spans = collector.wait_for(lambda spans: bool(consumer_spans(spans, event["id"])),
                                           what="the re-run attempt's span", timeout=60)
                recovery_s = time.monotonic() - killed_at
        finally:
            first.terminate()
            if second is not None:
                second.terminate()
            calls = [c for c in stub.calls() if c["route"] == SPEECH]
            stub_proc.terminate()

    (post,) = server_span(spans)
    (rerun,) = consumer_spans(spans, event["id"])
    report("trace_across_worker_crash", recovery_seconds=round(recovery_s, 1), gateway_calls=len(calls),
           rerun_attempt=rerun.attributes["runinfra.attempt"])
    assert (rerun.trace_id, rerun.parent_span_id) == (post.trace_id, post.span_id)
    assert rerun.attributes["runinfra.attempt"] == 2  # the killed attempt counted as the first
    assert children(spans, rerun, "CLIENT")
    assert len(calls) >= 2 and all(c["traceparent"].split("-")[1] == post.trace_id for c in calls)
