"""x-request-id on every response: the caller's when it is sane, otherwise a new one.

A pure ASGI middleware (not BaseHTTPMiddleware, which would buffer and re-wrap the body stream).
"""

from __future__ import annotations

import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runinfra_webhooks.service.core.ids import new_id

__all__ = ["RequestIdMiddleware", "assign_request_id", "request_id_of"]

_SANE = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
_SCOPE_KEY = "rwh.request_id"


_new_id = new_id


def request_id_of(scope: Scope) -> str:
    rid: str = scope.get(_SCOPE_KEY) or ""
    return rid


def assign_request_id(scope: Scope) -> str:
    """The request's id (the caller's x-request-id when sane, else a new one), kept in the scope."""
    rid = ""
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _SANE.match(value):
            rid = value.decode()
            break
    scope[_SCOPE_KEY] = rid = rid or _new_id()
    return rid


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = assign_request_id(scope).encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers", []))
                headers.append((b"x-request-id", raw))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)
