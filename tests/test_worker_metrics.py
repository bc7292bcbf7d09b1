"""`worker --metrics-port`: Prometheus text from a real worker process after it ran a gateway-bound job."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.builders import example_event, signed_delivery
from tests.processes import Proc, stack_env, wait_until
from tests.redis_server import free_port
from tests.stubserver import StubServer


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_worker_serves_the_metrics_of_jobs_gateway_calls_queue_and_breakers(
    receiver_url: str, redis_url: str, stub: StubServer, tmp_path: Path
) -> None:
    """After one follow-up job: its outcome, its /audio/speech call and latency, queue gauges, breaker states."""
    port = free_port()
    env = stack_env(redis_url, stub.base_url, tmp_path / "artifacts")
    worker = Proc(["worker", "--metrics-port", str(port)], env, tmp_path / "worker.log")
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        body, headers = signed_delivery(example_event("transcription.completed"))
        assert httpx.post(receiver_url + "/webhooks/runinfra", content=body, headers=headers).status_code == 202

        def done() -> bool:
            try:
                return scrape(url).get(("runinfra_worker_jobs_total", (("outcome", "succeeded"),)), 0) >= 1
            except httpx.HTTPError:
                return False

        wait_until(done, timeout=30, what="the job to show in the metrics")
        wait_until(lambda: scrape(url)[("runinfra_worker_queue_depth", ())] == 0, timeout=5, what="queue gauge")
        m = scrape(url)
    finally:
        worker.terminate()
    speech = (("route", "/audio/speech"),)
    assert m[("runinfra_worker_gateway_calls_total", (("route", "/audio/speech"), ("status", "200")))] == 1
    assert m[("runinfra_worker_gateway_call_seconds_count", speech)] == 1
    assert m[("runinfra_worker_oldest_queued_age_seconds", ())] == 0
    assert m[("runinfra_worker_dead_letters", ())] == 0
    assert m[("runinfra_worker_breaker_state", (("route", "/audio/speech"), ("state", "closed")))] == 1
    assert m[("runinfra_worker_breaker_state", (("route", "/embeddings"), ("state", "open")))] == 0
