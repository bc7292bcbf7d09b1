"""Traces across real processes: receiver, worker, gateway emulator and the CLI export to a test collector."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as sync_redis

from tests.builders import OLD_SECRET, SECRET, example_event, signed_delivery
from tests.otlp_collector import Collector, SpanRecord, otlp_collector
from tests.processes import Proc, cli, started_receiver, wait_until
from tests.redis_server import RedisServer
from tests.stubserver import STUB_API_KEY, StubServer
from tests.traced_stack import STUB_SERVICE, children, consumer_spans, server_span, start_stub, traced_env

PATH = "/webhooks/runinfra"
SPEECH = "/v1/audio/speech"


@dataclass
class Stack:
    receiver_url: str
    receiver: Proc
    worker: Proc
    stub: StubServer
    collector: Collector
    env: dict[str, str]
    redis: sync_redis.Redis


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One traced stack for the module; each test uses its own events and looks at its own traces only."""
    tmp = tmp_path_factory.mktemp("traced")
    with RedisServer(tmp) as server, otlp_collector() as collector:
        stub_port_env = traced_env(server.url, "http://unused", tmp, collector)
        stub_proc, stub = start_stub(stub_port_env, tmp / "stub.log")
        env = traced_env(server.url, stub.base_url, tmp, collector)
        worker = Proc(["worker"], env, tmp / "worker.log")
        try:
            with started_receiver(env, tmp / "receiver.log") as (url, receiver):
                yield Stack(url, receiver, worker, stub, collector, env, server.client())
        finally:
            worker.terminate()
            stub_proc.terminate()


@pytest.fixture
def traced(stack: Stack) -> Stack:
    stack.stub.reset()
    return stack


def deliver(stack: Stack, event: dict[str, Any], traceparent: str | None = None) -> httpx.Response:
    body, headers = signed_delivery(event)
    if traceparent is not None:
        headers["traceparent"] = traceparent
    return httpx.post(stack.receiver_url + PATH, content=body, headers=headers, timeout=30)


def show(env: dict[str, str], event_id: str) -> dict[str, Any]:
    out = cli(env, "events", "show", event_id)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def wait_state(env: dict[str, str], event_id: str, state: str, generation: int = 0) -> dict[str, Any]:
    def reached() -> bool:
        s = show(env, event_id)
        return s.get("state") == state and s.get("generation") == generation

    wait_until(reached, timeout=40, what=f"{event_id} to be {state}", interval=0.2)
    return show(env, event_id)


def log_lines(proc: Proc, event_id: str) -> list[dict[str, Any]]:
    lines = []
    for raw in proc.output().splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("event_id") == event_id:
            lines.append(line)
    return lines


def test_one_trace_holds_the_post_each_attempt_and_each_gateway_call(traced: Stack) -> None:
    """A 503 then a 200: the POST, two consumer attempts and two gateway calls share the delivery's trace."""
    traced.stub.set_faults(route=SPEECH, script=[503])
    event = example_event("transcription.completed")
    assert deliver(traced, event).status_code == 202
    wait_state(traced.env, event["id"], "succeeded")

    def complete(spans: list[SpanRecord]) -> bool:
        attempts = consumer_spans(spans, event["id"])
        return len(attempts) == 2 and all(children(spans, a, "CLIENT") for a in attempts) and len(
            [s for s in spans if s.service == STUB_SERVICE and s.trace_id == attempts[0].trace_id]) == 2

    spans = traced.collector.wait_for(complete, what="two attempts with their gateway calls")
    first, second = consumer_spans(spans, event["id"])
    (post,) = server_span(spans, first.trace_id)
    assert post.name == "POST /webhooks/runinfra" and post.parent_span_id == ""
    assert (first.service, first.attributes["runinfra.attempt"], second.attributes["runinfra.attempt"]) == (
        "runinfra-webhooks-worker", 1, 2)
    assert first.parent_span_id == second.parent_span_id == post.span_id
    assert first.status == "ERROR" and second.status != "ERROR"
    calls = [c for c in traced.stub.calls() if c["route"] == SPEECH]
    assert [c["status"] for c in calls] == [503, 200]
    for attempt, call in zip((first, second), calls, strict=True):
        (client,) = children(spans, attempt, "CLIENT")
        assert client.attributes.get("http.response.status_code", client.attributes.get("http.status_code")) == (
            call["status"])
        # version, trace id, the client span as parent, and the sampled bit among the flags
        version, trace_id, parent_id, flags = call["traceparent"].split("-")
        assert (version, trace_id, parent_id, int(flags, 16) & 1) == ("00", post.trace_id, client.span_id, 1)
        (stub_span,) = children(spans, client, "SERVER")
        assert stub_span.service == STUB_SERVICE


def test_an_incoming_traceparent_is_the_parent_of_the_receivers_span(traced: Stack) -> None:
    """The sender's trace context on the POST makes the receiver's server span its child, and the job's."""
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    event = example_event("deployment.created")
    assert deliver(traced, event, traceparent=f"00-{trace_id}-{parent_id}-01").status_code == 202

    spans = traced.collector.wait_for(lambda spans: bool(consumer_spans(spans, event["id"])),
                                      what="the job's span")
    (post,) = server_span(spans, trace_id)
    assert post.parent_span_id == parent_id
    (attempt,) = consumer_spans(spans, event["id"])
    assert (attempt.trace_id, attempt.parent_span_id) == (trace_id, post.span_id)


def test_the_trace_id_is_in_the_log_lines_and_in_events_show(traced: Stack) -> None:
    """The receiver's and the worker's lines of the event, and `events show`, carry the delivery's trace id."""
    event = example_event("deployment.created")
    assert deliver(traced, event).status_code == 202
    state = wait_state(traced.env, event["id"], "succeeded")
    spans = traced.collector.wait_for(lambda spans: bool(consumer_spans(spans, event["id"])), what="the job's span")
    (attempt,) = consumer_spans(spans, event["id"])

    assert state["trace_id"] == attempt.trace_id and state["replay_trace_id"] is None
    wait_until(lambda: any(line["event"] == "event.succeeded" for line in log_lines(traced.worker, event["id"])),
               timeout=10, what="the worker's log line")
    received = [line for line in log_lines(traced.receiver, event["id"]) if line["event"] == "webhook.received"]
    worked = log_lines(traced.worker, event["id"])
    assert received and worked
    assert {line.get("trace_id") for line in received + worked} == {attempt.trace_id}


def test_a_replay_starts_a_new_trace_linked_to_the_delivery(traced: Stack) -> None:
    """Dead-lettered by a 400, replayed from the CLI: the replay's attempt is in a new trace linking the first."""
    traced.stub.set_faults(route=SPEECH, script=[400])
    event = example_event("transcription.completed")
    assert deliver(traced, event).status_code == 202
    first_state = wait_state(traced.env, event["id"], "dead_lettered")

    replayed = cli(traced.env, "replay", event["id"])
    assert replayed.returncode == 0, replayed.stderr
    state = wait_state(traced.env, event["id"], "succeeded", generation=1)

    spans = traced.collector.wait_for(lambda spans: len(consumer_spans(spans, event["id"])) == 2
                                      and any(s.service == "runinfra-webhooks-cli" for s in spans),
                                      what="the replay's attempt")
    delivery_attempt, replay_attempt = consumer_spans(spans, event["id"])
    (post,) = server_span(spans, delivery_attempt.trace_id)
    assert first_state["trace_id"] == post.trace_id
    assert replay_attempt.trace_id != post.trace_id and state["replay_trace_id"] == replay_attempt.trace_id
    assert (post.trace_id, post.span_id) in replay_attempt.links
    (replay_root,) = [s for s in spans
                      if s.service == "runinfra-webhooks-cli" and s.trace_id == replay_attempt.trace_id]
    assert (replay_root.kind, replay_attempt.parent_span_id) == ("PRODUCER", replay_root.span_id)
    (call,) = [c for c in traced.stub.calls() if c["route"] == SPEECH and c["status"] == 200]
    assert call["traceparent"].split("-")[1] == replay_attempt.trace_id


def test_a_job_the_sweep_recreates_stays_in_the_delivery_trace(tmp_path: Path) -> None:
    """A queued job that vanished before any worker ran it is re-created by the sweep from the record."""
    with RedisServer(tmp_path) as server, otlp_collector() as collector:
        env = traced_env(server.url, "http://127.0.0.1:9/v1", tmp_path, collector)
        event = example_event("deployment.created")
        with started_receiver(env, tmp_path / "receiver.log") as (url, _):
            body, headers = signed_delivery(event)
            assert httpx.post(url + PATH, content=body, headers=headers, timeout=30).status_code == 202
        db = server.client()
        job_ids: list[bytes] = db.zrange("arq:queue", 0, -1)  # type: ignore[assignment]
        assert len(job_ids) == 1
        db.delete(b"arq:job:" + job_ids[0])  # the job vanishes; only the record knows about the event
        db.zrem("arq:queue", job_ids[0])

        worker = Proc(["worker"], env, tmp_path / "worker.log")
        try:
            spans = collector.wait_for(lambda spans: bool(consumer_spans(spans, event["id"])),
                                       what="the re-created job's span", timeout=30)
        finally:
            worker.terminate()
        (post,) = server_span(spans)
        (attempt,) = consumer_spans(spans, event["id"])
        assert (attempt.trace_id, attempt.parent_span_id) == (post.trace_id, post.span_id)
        assert "sweep.done" in worker.output()


def test_no_exported_span_holds_a_secret_or_the_api_key(traced: Stack) -> None:
    """Spans of a full delivery (server, consumer, gateway client) carry neither secret nor key nor signature."""
    event = example_event("transcription.completed")
    body, headers = signed_delivery(event)
    assert httpx.post(traced.receiver_url + PATH, content=body, headers=headers, timeout=30).status_code == 202
    spans = traced.collector.wait_for(
        lambda spans: any(children(spans, a, "CLIENT") for a in consumer_spans(spans, event["id"])),
        what="the delivery's gateway call")
    mine = [s for s in spans if s.trace_id == consumer_spans(spans, event["id"])[0].trace_id]
    text = repr(mine)
    signature = headers["runinfra-signature"].split("v1=")[1]
    assert len(mine) >= 3
    for forbidden in (SECRET, OLD_SECRET, STUB_API_KEY, signature):
        assert forbidden not in text
