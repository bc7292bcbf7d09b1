"""Read a request body under a size limit and a time limit, before anything else looks at it.

The limit is decided from Content-Length when there is one and enforced again while streaming (chunked
bodies, lying clients), so no HMAC is ever computed over more than ``limit`` bytes.

This is Starlette's ``Request.stream()`` loop written out on the raw ASGI ``receive`` (same messages, same
``ClientDisconnect``) without the async generator and the ``Headers`` object: it runs once per delivery.
"""

from __future__ import annotations

import asyncio

import structlog
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from runinfra_webhooks.service.receiver.problems import BodyTooLarge, ClientDisconnected, RequestTimeout
from runinfra_webhooks.service.receiver.request_id import request_id_of

__all__ = ["read_limited_body"]

log = structlog.get_logger("service.body")

_CONTENT_LENGTH = b"content-length"


async def read_limited_body(scope: Scope, receive: Receive, *, limit: int, timeout: float) -> bytes:
    declared: str | None = None
    for name, value in scope["headers"]:
        if name == _CONTENT_LENGTH:
            declared = value.decode("latin-1")
            break
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            more = True
            while more:
                message = await receive()
                kind = message["type"]
                if kind == "http.request":
                    more = message.get("more_body", False)
                    chunk = message.get("body", b"")
                    if chunk:
                        size += len(chunk)
                        if size > limit:
                            raise BodyTooLarge(f"body exceeds the limit of {limit} bytes")
                        chunks.append(chunk)
                elif kind == "http.disconnect":
                    raise ClientDisconnect()
    except TimeoutError:
        raise RequestTimeout(f"body not received within {timeout:g} s") from None
    except ClientDisconnect:
        # The client hung up mid-body: an ordinary event, not a server error (the answer goes nowhere).
        log.info("webhook.client_disconnected", request_id=request_id_of(scope), received=size)
        raise ClientDisconnected(f"the client closed the connection after {size} body bytes") from None
    return b"".join(chunks)
