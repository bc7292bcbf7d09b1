"""What a worker process builds once at start-up and every job shares."""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis

from runinfra_webhooks.handlers.registry import Registry
from runinfra_webhooks.service.gateway.client import GatewayClient
from runinfra_webhooks.service.settings import WorkerSettings
from runinfra_webhooks.service.storage.records import Records
from runinfra_webhooks.service.tracing import NO_TRACING, Tracing

__all__ = ["WorkerDeps"]


@dataclass(frozen=True)
class WorkerDeps:
    settings: WorkerSettings
    redis: Redis
    records: Records
    gateway: GatewayClient | None  # None without RUNINFRA_API_KEY: gateway-bound reactions dead-letter
    registry: Registry
    tracing: Tracing = field(default=NO_TRACING)
