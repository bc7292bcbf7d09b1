"""What a worker process builds once at start-up and every job shares."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from service.records import Records
from service.settings import Settings
from workers.gateway import GatewayClient

__all__ = ["WorkerDeps"]


@dataclass(frozen=True)
class WorkerDeps:
    settings: Settings
    redis: Redis
    records: Records
    gateway: GatewayClient | None  # None without RUNINFRA_API_KEY: gateway-bound reactions dead-letter
