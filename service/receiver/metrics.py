"""Prometheus metrics of one receiver, in a registry of its own (tests build many apps in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["ReceiverMetrics"]


@dataclass
class ReceiverMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.deliveries = Counter(
            "runinfra_webhook_deliveries", "Deliveries by outcome", ["outcome"], registry=self.registry
        )
        self.duplicates = Counter(
            "runinfra_webhook_duplicates", "Deliveries of an event id already received", registry=self.registry
        )
        self.latency = Histogram(
            "runinfra_webhook_request_seconds", "Time to answer a delivery", registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.redis_errors = Counter(
            "runinfra_webhook_redis_errors", "Redis calls that failed", registry=self.registry
        )
        self._by_outcome: dict[str, Counter] = {}

    def delivered(self, outcome: str) -> None:
        """``deliveries{outcome}`` += 1, with the labelled child looked up once per outcome (hot path)."""
        child = self._by_outcome.get(outcome)
        if child is None:
            child = self._by_outcome[outcome] = self.deliveries.labels(outcome)
        child.inc()
