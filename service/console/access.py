"""Who may use the console: the bearer token for the API, server-side sessions and CSRF tokens for pages,
and the security headers every response carries.

A session is a random cookie value; Redis keeps only its SHA-256 (with the session's CSRF token), so a copy
of Redis opens no session, and logging out deletes it: the same cookie, replayed, opens nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runinfra_webhooks.service.storage import keys

__all__ = [
    "COOKIE",
    "SECURITY_HEADERS",
    "SecurityHeadersMiddleware",
    "Session",
    "Sessions",
    "bearer_ok",
    "token_ok",
]

COOKIE = "rwh_console"

# Scripts only from the console itself (htmx and two small files), never inline; no framing, no referrer.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cross-origin-opener-policy": "same-origin",
}


class SecurityHeadersMiddleware:
    """Adds SECURITY_HEADERS to every HTTP response, errors and static files included (pure ASGI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if "cache-control" not in headers:
                    headers["cache-control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def token_ok(given: str, expected: str) -> bool:
    """Constant-time comparison of a presented token with the configured one."""
    return hmac.compare_digest(given.encode(), expected.encode())


def bearer_ok(authorization: str | None, expected: str) -> bool:
    if not authorization:
        return False
    scheme, _, value = authorization.partition(" ")
    return scheme.lower() == "bearer" and token_ok(value.strip(), expected)


@dataclass(frozen=True, slots=True)
class Session:
    key: str  # the Redis key (hash of the cookie value)
    csrf: str

    def csrf_ok(self, presented: Any) -> bool:
        return isinstance(presented, str) and bool(presented) and token_ok(presented, self.csrf)


def _key(cookie_value: str) -> str:
    return keys.console_session(hashlib.sha256(cookie_value.encode()).hexdigest())


class Sessions:
    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    async def create(self) -> tuple[str, Session]:
        """A new session: (cookie value, session)."""
        value = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        key = _key(value)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"csrf": csrf, "created_ms": time.time_ns() // 1_000_000})
        pipe.expire(key, self.ttl_s)
        await pipe.execute()
        return value, Session(key, csrf)

    async def get(self, cookie_value: str | None) -> Session | None:
        if not cookie_value or len(cookie_value) > 256:
            return None
        key = _key(cookie_value)
        csrf = await self.redis.hget(key, "csrf")  # type: ignore[misc]
        return Session(key, csrf.decode()) if csrf else None

    async def end(self, session: Session) -> None:
        await self.redis.delete(session.key)
