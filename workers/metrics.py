"""The worker's Prometheus metrics, served by ``worker --metrics-port P`` at ``/metrics``.

Counters and the latency histogram are this process's own; the gauges (queue depth, oldest queued age,
breaker state per route, dead letters, parked events) describe the shared Redis and are refreshed by the
worker's monitor loop, so a scrape never waits on Redis.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from runinfra_webhooks.service.gateway.flow import BreakerState

__all__ = ["BREAKER_STATES", "WorkerMetrics"]

BREAKER_STATES = ("closed", "half_open", "open")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class WorkerMetrics:
    def __init__(self, routes: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = Counter("runinfra_worker_jobs", "Jobs run, by outcome (succeeded, dead_lettered, retrying, "
                            "waiting: held back by flow control, skipped: paused, finished or superseded)",
                            ["outcome"], registry=r)
        self.gateway_calls = Counter("runinfra_worker_gateway_calls", "Gateway HTTP attempts by route and status "
                                     "(HTTP status, or timeout / unreachable / cancelled)", ["route", "status"],
                                     registry=r)
        self.gateway_latency = Histogram("runinfra_worker_gateway_call_seconds", "Gateway HTTP attempt latency",
                                         ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("runinfra_worker_queue_depth", "Jobs on the queue (due, deferred or running)",
                                 registry=r)
        self.oldest_queued_age = Gauge("runinfra_worker_oldest_queued_age_seconds",
                                       "How long the oldest waiting event has waited: the oldest runnable job "
                                       "not yet started, or the oldest event held by a pause", registry=r)
        self.breaker_state = Gauge("runinfra_worker_breaker_state", "1 for the current state of each route's "
                                   "circuit breaker, 0 for the others", ["route", "state"], registry=r)
        self.dead_letters = Gauge("runinfra_worker_dead_letters", "Events dead-lettered and retained", registry=r)
        self.paused_events = Gauge("runinfra_worker_paused_events", "Events waiting because their type is paused",
                                   registry=r)
        for route in routes:
            self.set_breaker(BreakerState(route, "closed", 0, 0))

    def observe_call(self, route: str, status: str, seconds: float) -> None:
        self.gateway_calls.labels(route, status).inc()
        self.gateway_latency.labels(route).observe(seconds)

    def job(self, outcome: str) -> None:
        self.jobs.labels(outcome).inc()

    def set_breaker(self, state: BreakerState) -> None:
        for name in BREAKER_STATES:
            self.breaker_state.labels(state.route, name).set(1.0 if state.state == name else 0.0)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` from a daemon thread (Prometheus' own WSGI server)."""
        start_http_server(port, addr=host, registry=self.registry)
