"""What every console route needs, built once by the app factory and passed to the route modules."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from runinfra_webhooks.service.console.access import Sessions
from runinfra_webhooks.service.settings import ConsoleSettings
from runinfra_webhooks.service.storage.listing import EventIndex
from runinfra_webhooks.service.storage.records import Records

__all__ = ["Console", "now_ms"]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Console:
    settings: ConsoleSettings
    redis: Redis
    records: Records
    index: EventIndex
    sessions: Sessions
    token: str  # the console token (never rendered, never logged)

    def verify_args(self) -> dict[str, Any]:
        return {"secrets": self.settings.secret_values(), "tolerance": self.settings.tolerance}
