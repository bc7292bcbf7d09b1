"""Reactions: one plain async function per event type, registered here.

Adding a reaction touches only this package: write ``async def handle(event, ctx)`` in a module and add
it to ``HANDLERS``. Handlers must be idempotent (jobs run at least once) and raise
``handlers.errors.PermanentError`` for what retrying cannot fix.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from runinfra_webhooks.handlers import deployments as deployments
from runinfra_webhooks.handlers import embeddings as embeddings
from runinfra_webhooks.handlers import followup as followup
from runinfra_webhooks.handlers.context import HandlerContext

__all__ = ["HANDLERS", "Handler", "HandlerContext", "handlers_for"]

Handler = Callable[[Any, HandlerContext], Awaitable[None]]

# Several reactions may follow one type; they run in this order, each idempotent on its own.
HANDLERS: Mapping[str, tuple[Handler, ...]] = {
    "deployment.created": (deployments.handle,),
    "deployment.ready": (deployments.handle, embeddings.handle),
    "deployment.updated": (deployments.handle, embeddings.handle),
    "deployment.failed": (deployments.handle,),
    "deployment.deleted": (deployments.handle,),
    "transcription.completed": (followup.handle,),
}


def handlers_for(event_type: str) -> tuple[Handler, ...]:
    return HANDLERS.get(event_type, ())
