"""x-request-id on every response: the caller's when it is sane, otherwise a new one.

A pure ASGI middleware (not BaseHTTPMiddleware, which would buffer and re-wrap the body stream).
"""

from __future__ import annotations

import os
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestIdMiddleware", "request_id_of"]

_SANE = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
_SCOPE_KEY = "rwh.request_id"


class _Ids:
    """New ids in ``uuid.uuid4().hex``'s format, from urandom read 4 KiB at a time instead of 16 bytes per call."""

    _BATCH = 256

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0
        self._pid = 0

    def new(self) -> str:
        if self._pos >= len(self._buf) or self._pid != os.getpid():  # never share bytes with a forked child
            self._buf, self._pos, self._pid = os.urandom(16 * self._BATCH), 0, os.getpid()
        raw = bytearray(self._buf[self._pos:self._pos + 16])
        self._pos += 16
        raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
        return raw.hex()


_new_id = _Ids().new


def request_id_of(scope: Scope) -> str:
    rid: str = scope.get(_SCOPE_KEY) or ""
    return rid


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id" and _SANE.match(value):
                rid = value.decode()
                break
        scope[_SCOPE_KEY] = rid = rid or _new_id()
        raw = rid.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers", []))
                headers.append((b"x-request-id", raw))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)
