"""What a handler gets besides its typed event: settings, Redis, and gateway calls bound to this event."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from runinfra_webhooks.handlers.errors import PermanentError
from runinfra_webhooks.service.gateway.client import GatewayClient, GatewayResponse, idempotency_key
from runinfra_webhooks.service.settings import Settings
from runinfra_webhooks.service.storage.coalesce import CoalescedScript, Coalescer

__all__ = ["HandlerContext"]


@dataclass(frozen=True)
class HandlerContext:
    settings: Settings
    redis: Redis
    event_id: str
    generation: int
    gateway: GatewayClient | None
    # Stores a gateway x-request-id with the event's processing state (contract §7).
    record_request_id: Callable[[str], Awaitable[None]]
    # A handler that saves progress durably (a committed batch) says so: an attempt that progressed and then
    # timed out or failed transiently does not count towards RUNINFRA_MAX_ATTEMPTS, so a corpus too large for
    # one attempt is finished over several instead of dead-lettered.
    note_progress: Callable[[], None] = lambda: None
    # The worker's shared script runner: concurrent jobs' scripts go to Redis in one round trip.
    scripts: Coalescer | None = None
    # When set, used instead of record_request_id: also keeps the call's idempotency key (the console shows it).
    record_gateway_call: Callable[[str, str], Awaitable[None]] | None = None

    def script(self, text: str) -> CoalescedScript:
        """A Lua script to ``await s(keys=[...], args=[...])``, run through the worker's coalescer."""
        return (self.scripts if self.scripts is not None else Coalescer(self.redis)).script(text)

    def key(self, step: str, part: int | str = 0) -> str:
        """The Idempotency-Key of one logical call of this event: same on every retry, new per replay."""
        return idempotency_key(self.event_id, step, part, self.generation)

    async def call_gateway(self, route: str, body: dict[str, Any], *, step: str, part: int | str = 0
                           ) -> GatewayResponse:
        """POST to the gateway with this event's key for (step, part); the gateway request id is recorded."""
        if self.gateway is None:
            raise PermanentError("gateway_not_configured", "RUNINFRA_API_KEY is not set")
        key = self.key(step, part)
        response = await self.gateway.post(route, body, idempotency_key=key)
        if response.request_id and self.record_gateway_call is not None:
            await self.record_gateway_call(response.request_id, key)
        elif response.request_id:
            await self.record_request_id(response.request_id)
        return response
