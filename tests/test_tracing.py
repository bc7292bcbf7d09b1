"""Tracing's switch and the trace context kept with the record, without a collector."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from runinfra_webhooks.service.core.trace_context import new_traceparent, trace_id_of
from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.records import Records
from runinfra_webhooks.service.tracing import NO_TRACING, setup_tracing, tracing_requested
from tests.builders import example_event, signed_delivery

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize("value", [
    "", "garbage", VALID.upper(), VALID.replace("00-", "01-", 1), VALID + "-extra",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
])
def test_trace_id_of_refuses_what_is_not_a_valid_traceparent(value: str) -> None:
    """Malformed, other versions and all-zero ids give no trace id."""
    assert trace_id_of(value) is None


def test_trace_id_of_reads_the_trace_id() -> None:
    """The second field of a valid traceparent is its trace id."""
    assert trace_id_of(VALID) == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_new_traceparent_is_valid_sampled_and_new_each_time() -> None:
    """A minted trace context parses, is sampled, and never repeats."""
    minted = {new_traceparent() for _ in range(100)}
    assert len(minted) == 100
    assert all(trace_id_of(t) is not None and t.endswith("-01") for t in minted)


@pytest.mark.parametrize("environ", [
    {},
    {"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on", "OTEL_EXPORTER_OTLP_ENDPOINT": "  "},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"},
])
def test_tracing_stays_off_unless_an_otlp_endpoint_is_set(environ: dict[str, str]) -> None:
    """No endpoint variable (or the SDK disabled): no tracing object with any effect."""
    assert not tracing_requested(environ)
    assert setup_tracing("receiver", environ) is NO_TRACING


@pytest.mark.parametrize("name", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
def test_either_endpoint_variable_turns_tracing_on(name: str) -> None:
    """The generic and the traces-only endpoint both ask for export."""
    assert tracing_requested({name: "http://127.0.0.1:4318"})


def test_tracing_asked_for_without_the_extra_says_so_and_traces_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the otel extra missing, start-up gets a reason to log and every hook stays a no-op."""
    monkeypatch.setitem(sys.modules, "runinfra_webhooks.service.tracing.otel", None)  # import fails
    tracing = setup_tracing("worker", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert not tracing.enabled and tracing.describe()["tracing"] == "unavailable"
    assert "runinfra-webhooks[otel]" in tracing.describe()["reason"]
    assert tracing.middleware() == [] and tracing.current_traceparent() == ""


def test_an_untraced_receiver_and_worker_import_nothing_of_opentelemetry() -> None:
    """Without the OTEL_* variables, building the receiver and the worker loads no OpenTelemetry module."""
    code = (
        "import os, sys\n"
        "os.environ['RUNINFRA_WEBHOOK_SECRET'] = 'whsec_x'\n"
        "from runinfra_webhooks.service.settings import load_settings\n"
        "from runinfra_webhooks.service.receiver.app import create_app\n"
        "from runinfra_webhooks.service.tracing import setup_tracing\n"
        "from runinfra_webhooks.workers.settings import build_worker\n"
        "s = load_settings()\n"
        "create_app(s, tracing=setup_tracing('receiver', {}))\n"
        "build_worker(s, burst=True, tracing=setup_tracing('worker', {}))\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_an_untraced_receiver_keeps_no_trace_context(receiver_url: str, redis_url: str) -> None:
    """Tracing off: an incoming traceparent is not adopted; the record and `events show` have no trace id."""
    event = example_event("deployment.created")
    body, headers = signed_delivery(event)
    headers["traceparent"] = VALID
    assert httpx.post(receiver_url + "/webhooks/runinfra", content=body, headers=headers).status_code == 202
    db = sync_redis.Redis.from_url(redis_url)
    assert db.hget(keys.event(event["id"]), "traceparent") == b""  # type: ignore[comparison-overlap]


async def test_a_replay_without_a_trace_context_gets_a_fresh_one(redis: Redis, receiver_url: str) -> None:
    """A replaying caller that traces nothing still starts a new trace; the delivery's trace id stays."""
    event = example_event("deployment.created", data={"oops": True})  # dead-lettered at the door
    body, headers = signed_delivery(event)
    async with httpx.AsyncClient() as client:
        answer = await client.post(receiver_url + "/webhooks/runinfra", content=body, headers=headers)
    assert answer.status_code == 202
    # as a traced receiver would have stored it
    await redis.hset(keys.event(event["id"]), "traceparent", VALID)  # type: ignore[misc]
    records = Records(redis, event_retention=60, dead_letter_retention=60, job_expiry_s=60)

    assert await records.replay(event["id"], time.time_ns() // 1_000_000) == 1
    first = await records.get(event["id"])
    assert first is not None
    shown = first.as_json()
    assert shown["trace_id"] == trace_id_of(VALID)
    assert shown["replay_trace_id"] not in (None, shown["trace_id"])
