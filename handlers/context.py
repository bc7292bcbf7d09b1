"""What a handler gets besides its typed event: who it is, which attempt, a logger, and gateway calls whose
idempotency keys are bound to this event, this handler and the key generation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from runinfra_webhooks.handlers.errors import PermanentError
from runinfra_webhooks.service.gateway.client import GatewayResponse, idempotency_key

if TYPE_CHECKING:  # kept out of the import: the library API must import without Redis
    from redis.asyncio import Redis

    from runinfra_webhooks.service.gateway.client import GatewayClient
    from runinfra_webhooks.service.settings import WorkerSettings
    from runinfra_webhooks.service.storage.coalesce import CoalescedScript, Coalescer

__all__ = ["HandlerContext"]


async def _not_recorded(request_id: str, idempotency_key: str) -> None:
    return None


@dataclass(frozen=True)
class HandlerContext:
    """Handed to every handler with its event.

    ``event_id``, ``attempt`` (1 on the first try), ``generation`` (0 until a manual replay), ``log`` (bound to
    the event), ``call_gateway`` and ``idempotency_key`` are the stable surface; ``settings`` and ``redis`` are
    there for reactions that need the service's own configuration and storage.
    """

    event_id: str
    generation: int = 0
    attempt: int = 1
    settings: WorkerSettings | None = None
    redis: Redis | None = None
    gateway: GatewayClient | None = None
    # The handler's qualified name scopes its keys, so two handlers of one event never share a key. The
    # built-in reactions keep the unscoped keys they have always sent, so an upgrade re-sends no inference.
    scope: str = ""
    log: Any = field(default_factory=lambda: structlog.get_logger("handlers"))
    # Keeps a gateway call's x-request-id and idempotency key with the event's processing state.
    record_gateway_call: Callable[[str, str], Awaitable[None]] = _not_recorded
    # A handler that saves progress durably (a committed batch) says so: an attempt that progressed and then
    # timed out or failed transiently does not count towards RUNINFRA_MAX_ATTEMPTS, so a corpus too large for
    # one attempt is finished over several instead of dead-lettered.
    note_progress: Callable[[], None] = lambda: None
    # The worker's shared script runner: concurrent jobs' scripts go to Redis in one round trip.
    scripts: Coalescer | None = None

    def require_settings(self) -> WorkerSettings:
        """The service's settings (always set in a worker; a handler's own test may leave them out)."""
        if self.settings is None:
            msg = "this context has no settings"
            raise RuntimeError(msg)
        return self.settings

    def require_redis(self) -> Redis:
        """The service's Redis (always set in a worker)."""
        if self.redis is None:
            msg = "this context has no Redis"
            raise RuntimeError(msg)
        return self.redis

    def script(self, text: str) -> CoalescedScript:
        """A Lua script to ``await s(keys=[...], args=[...])``, run through the worker's coalescer."""
        if self.scripts is not None:
            return self.scripts.script(text)
        from runinfra_webhooks.service.storage.coalesce import Coalescer

        return Coalescer(self.require_redis()).script(text)

    def idempotency_key(self, step: str, part: int | str = 0) -> str:
        """The Idempotency-Key of one logical call: the same on every retry, new per replay."""
        return idempotency_key(self.event_id, f"{self.scope}/{step}" if self.scope else step, part, self.generation)

    async def call_gateway(self, route: str, json: dict[str, Any], *, step: str, part: int | str = 0
                           ) -> GatewayResponse:
        """POST ``json`` to the gateway ``route`` with this call's key; the gateway request id is recorded.

        Retries transient failures with backoff and raises the gateway client's typed errors otherwise.
        """
        if self.gateway is None:
            raise PermanentError("gateway_not_configured", "RUNINFRA_API_KEY is not set")
        key = self.idempotency_key(step, part)
        response = await self.gateway.post(route, json, idempotency_key=key)
        if response.request_id:
            await self.record_gateway_call(response.request_id, key)
        return response
