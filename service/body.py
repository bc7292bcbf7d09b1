"""Read a request body under a size limit and a time limit, before anything else looks at it.

The limit is decided from Content-Length when there is one and enforced again while streaming (chunked
bodies, lying clients), so no HMAC is ever computed over more than ``limit`` bytes.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from service.problems import BodyTooLarge, RequestTimeout

__all__ = ["read_limited_body"]


async def read_limited_body(request: Request, *, limit: int, timeout: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"body not received within {timeout:g} s") from None
    return b"".join(chunks)
