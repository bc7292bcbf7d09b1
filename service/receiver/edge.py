"""The receiver's HTTP edge: uvicorn's httptools protocol with the bounds it lacks.

uvicorn with httptools buffers request headers without limit and waits for them without a deadline, and
accepts any number of connections. This protocol adds, per connection:

* a cap on the request line plus headers (``max_header_bytes``): bytes are fed to the parser only up to the
  cap, so a 100 MB header costs at most the cap in memory before it is answered ``431`` and closed;
* a header-read deadline (``header_timeout``), armed when the connection opens and when a request's headers
  are still incomplete after a read, disarmed once they are complete: a connection that trickles a header
  (slowloris) is closed when it runs out. A kept-alive connection idle between requests is uvicorn's
  keep-alive timeout's to close;
* a bound on open connections (``max_connections``): one more is answered ``503`` and closed at once, before
  anything is read, so a flood costs the newcomers and not the connections already being served.

The answers are problem documents like the app's own (``application/problem+json`` with a code).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from runinfra_webhooks.service.core.ids import new_id

__all__ = ["EdgeLimits", "bounded_protocol"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeLimits:
    max_header_bytes: int  # request line + headers, CRLFs included
    header_timeout: float  # seconds
    max_connections: int


def _problem(status: int, reason: str, code: str, title: str, detail: str, extra: dict[str, str]) -> bytes:
    request_id = new_id()
    body = json.dumps({
        "type": f"https://docs.runinfra.ai/webhooks/problems#{code}", "title": title, "status": status,
        "detail": detail, "code": code, "request_id": request_id,
    }, separators=(",", ":")).encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/problem+json",
            f"content-length: {len(body)}", f"x-request-id: {request_id}", "connection: close",
            *(f"{k}: {v}" for k, v in extra.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# The parent's per-request methods, called directly (no super() per call: this runs on every request).
_feed = HttpToolsProtocol.data_received
_message_begin = HttpToolsProtocol.on_message_begin
_headers_complete = HttpToolsProtocol.on_headers_complete
_message_complete = HttpToolsProtocol.on_message_complete


class _BoundedProtocol(HttpToolsProtocol):
    limits: EdgeLimits  # set on the subclass bounded_protocol() makes

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._max_header_bytes = self.limits.max_header_bytes
        self._header_bytes = 0
        self._reading_headers = True  # counting bytes against the cap: until this request's headers end
        self._in_headers = False  # between the first byte of a request and the end of its headers
        self._header_timer: asyncio.TimerHandle | None = None

    # --- connection --------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            detail = "too many open connections; retry shortly"
            transport.write(_problem(503, "Service Unavailable", "too_many_connections",
                                     "Too many connections", detail, {"retry-after": "1"}))
            transport.close()
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    # --- header bound ------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused or answered with "connection: close": nothing more is read
        if not self._reading_headers:
            _feed(self, data)
            return
        room = self._max_header_bytes - self._header_bytes
        if len(data) <= room:
            self._header_bytes += len(data)
            _feed(self, data)
        else:
            # Feed only what still fits: if the headers end inside it, the rest is body (or the next request).
            self._header_bytes += room
            _feed(self, data[:room])
            if self._reading_headers:
                self._refuse_headers()
                return
            self.data_received(data[room:])
        # A request whose headers came in one piece never needs a timer; one still incomplete gets one.
        if self._in_headers and self._header_timer is None and not self.transport.is_closing():
            self._arm_header_timer()

    def _refuse_headers(self) -> None:
        self._disarm_header_timer()
        detail = f"request line and headers exceed {self.limits.max_header_bytes} bytes"
        self.transport.write(_problem(431, "Request Header Fields Too Large", "headers_too_large",
                                      "Request headers too large", detail, {}))
        self.transport.close()

    # --- header deadline ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        _message_begin(self)
        self._reading_headers = self._in_headers = True

    def on_headers_complete(self) -> None:
        self._reading_headers = self._in_headers = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        _headers_complete(self)

    def on_message_complete(self) -> None:
        _message_complete(self)
        # The next request on this connection gets its own header budget.
        self._header_bytes = 0
        self._reading_headers = True

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._header_bytes:
            detail = f"request headers not received within {self.limits.header_timeout:g} s"
            self.transport.write(_problem(408, "Request Timeout", "header_timeout", "Request headers not received "
                                          "in time", detail, {}))
        self.transport.close()


def bounded_protocol(limits: EdgeLimits) -> type[HttpToolsProtocol]:
    """The protocol class to pass as uvicorn's ``http=``, bound to ``limits``."""
    return type("BoundedHttpToolsProtocol", (_BoundedProtocol,), {"limits": limits})
