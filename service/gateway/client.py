"""The RunInfra gateway client: headers, idempotency keys, inline retries, typed errors.

Retryable vs permanent is decided here, by status, once: connection errors, timeouts, 408, 409, 429 and
5xx raise ``GatewayTransientError``; every other non-2xx raises ``GatewayPermanentError``. Transient failures
are retried inline a few times (full jitter, ``Retry-After`` wins, see ``workers.backoff``); when the next
wait would be longer than ``max_inline_wait`` or the attempts are used up, the transient error is raised
with ``retry_after`` set so the job layer can defer the whole job instead of holding a worker slot.

Every attempt of one logical call sends the same ``Idempotency-Key`` (so the gateway charges once) and a
fresh ``X-Client-Request-Id``. The API key goes into the ``Authorization`` header and nowhere else: not
into logs, not into error messages (a gateway message that echoes it is redacted).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import structlog

from runinfra_webhooks.service.gateway.backoff import backoff_delay, parse_retry_after

if TYPE_CHECKING:
    from runinfra_webhooks.service.gateway.flow import FlowControl
    from runinfra_webhooks.service.settings import WorkerSettings

__all__ = [
    "GatewayClient",
    "GatewayError",
    "GatewayPermanentError",
    "GatewayResponse",
    "GatewayTransientError",
    "idempotency_key",
]

IDEMPOTENCY_KEY_PREFIX = "rwh_"
_KEY_SEPARATOR = "\x1f"
_KEY_HEX_CHARS = 48
_MAX_MESSAGE = 200

_TRANSIENT_STATUSES = frozenset({408, 409, 429})
_STATUS_CODES = {
    400: "gateway_bad_request",
    401: "gateway_unauthorized",
    403: "gateway_forbidden",
    404: "gateway_not_found",
    408: "gateway_request_timeout",
    409: "gateway_conflict",
    413: "gateway_payload_too_large",
    422: "gateway_unprocessable",
    429: "gateway_rate_limited",
}


def idempotency_key(event_id: str, step: str, part: int | str, generation: int) -> str:
    """The ``Idempotency-Key`` of one logical gateway call: the same inputs always give the same key.

    ``step`` names the reaction step (``"embed"``, ``"chat"``, ``"speech"``), ``part`` the batch within it,
    ``generation`` the key generation (0, bumped only by a manual replay). ``rwh_`` + 48 hex characters.
    """
    fields = (event_id, step, str(part), str(generation))
    if any(_KEY_SEPARATOR in field for field in fields):
        msg = "idempotency key fields must not contain the \\x1f separator"
        raise ValueError(msg)
    if generation < 0:
        msg = f"generation must be >= 0, got {generation}"
        raise ValueError(msg)
    digest = hashlib.sha256(_KEY_SEPARATOR.join(fields).encode()).hexdigest()
    return IDEMPOTENCY_KEY_PREFIX + digest[:_KEY_HEX_CHARS]


class GatewayError(Exception):
    """A gateway call that did not succeed. ``str(error)`` is one line and never contains the API key."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int | None = None,
        error_type: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.error_type = error_type
        self.request_id = request_id
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, "
            f"error_type={self.error_type!r}, request_id={self.request_id!r}, retry_after={self.retry_after!r})"
        )


class GatewayTransientError(GatewayError):
    """Worth trying again later: connection error, timeout, 408, 409, 429, 5xx.

    When raised by ``GatewayClient.post``, ``retry_after`` is the seconds to wait before the next try.
    """


class GatewayPermanentError(GatewayError):
    """Will fail the same way again (400, 401, 403, 404, 413, 422, any other 4xx): dead-letter, no retry."""


@dataclass(frozen=True, slots=True)
class GatewayResponse:
    """A 2xx answer; ``replayed`` is true when the gateway replayed a stored answer for the key."""

    status: int
    content: bytes
    content_type: str
    request_id: str | None
    replayed: bool

    def json(self) -> Any:
        """The body decoded as JSON; a body that is not JSON raises ``GatewayPermanentError``."""
        try:
            return json.loads(self.content)
        except ValueError:
            msg = f"gateway answered {self.status} with a body that is not JSON ({self.content_type or '-'})"
            raise GatewayPermanentError(
                msg, code="gateway_invalid_response", status=self.status, request_id=self.request_id
            ) from None


OnCall = Callable[[str, GatewayResponse | GatewayError], None]


# httpx's connection pool re-examines every one of its connections on each request and each response (and
# polls each idle socket), so its cost per call grows with the pool's size: at 50 connections that pass was
# 40 % of a gateway-bound worker's CPU. Several small pools, each call on the one with the most room, keep it flat.
_CONNECTIONS_PER_POOL = 4


class GatewayClient:
    """Pooled ``httpx.AsyncClient``s to the gateway; use one per worker process and ``aclose`` it."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float,
        max_connections: int,
        max_attempts: int,
        retry_base: float,
        retry_cap: float,
        max_inline_wait: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_call: OnCall | None = None,
        flow: FlowControl | None = None,
    ) -> None:
        if not api_key:
            msg = "RUNINFRA_API_KEY is not set; gateway calls need it"
            raise GatewayPermanentError(msg, code="api_key_missing")
        if max_attempts < 1:
            msg = f"max_attempts must be >= 1, got {max_attempts}"
            raise ValueError(msg)
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._max_attempts = max_attempts
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._max_inline_wait = max_inline_wait
        self._sleep = sleep
        self._on_call = on_call
        # Limits, 429 pauses and the breaker shared with every worker (service.gateway.flow); None: no waiting.
        self._flow = flow
        self._log = structlog.get_logger(__name__)
        pools = 1 if transport is not None else -(-max_connections // _CONNECTIONS_PER_POOL)
        # Pool sizes that add up to max_connections exactly; a call goes to the pool with the most room.
        sizes = [max_connections // pools + (i < max_connections % pools) for i in range(pools)]
        tls = httpx.create_ssl_context()  # one for all pools: building one costs tens of milliseconds
        self._clients = [
            httpx.AsyncClient(
                timeout=httpx.Timeout(timeout),
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                transport=transport,
                follow_redirects=False,
                verify=tls,
            )
            for size in sizes
        ]
        self._room = sizes  # connections of each pool not in use by a call now (negative: calls queue there)

    @classmethod
    def from_settings(cls, settings: WorkerSettings, **overrides: Any) -> GatewayClient:
        """Build from ``WorkerSettings``; raises ``GatewayPermanentError(code="api_key_missing")`` without a key.

        ``overrides`` are passed to the constructor (``transport``, ``sleep``, ``on_call``, ...).
        """
        api_key = settings.api_key.get_secret_value() if settings.api_key is not None else ""
        kwargs: dict[str, Any] = {
            "timeout": settings.gateway_timeout,
            "max_connections": settings.gateway_max_connections,
            "max_attempts": settings.gateway_max_attempts,
            "retry_base": settings.retry_base,
            "retry_cap": settings.retry_cap,
        }
        kwargs.update(overrides)
        return cls(settings.base_url, api_key, **kwargs)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()

    async def post(self, route: str, body: dict[str, Any], *, idempotency_key: str) -> GatewayResponse:
        """POST ``body`` as JSON to ``base_url + route``, retrying transient failures inline.

        Returns the 2xx response; raises ``GatewayPermanentError`` at once on a permanent failure and
        ``GatewayTransientError`` (``retry_after`` set) when the call should be tried again later; with flow
        control, ``GatewayHeld`` (a ``GatewayTransientError``) when the call was not sent at all.
        """
        url = f"{self._base_url}/{route.lstrip('/')}"
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        attempt = 1
        while True:
            outcome = await self._limited_attempt(route, url, content, idempotency_key, attempt)
            if self._on_call is not None:
                self._on_call(route, outcome)
            if isinstance(outcome, GatewayResponse):
                return outcome
            if isinstance(outcome, GatewayPermanentError):
                raise outcome
            delay = backoff_delay(attempt, base=self._retry_base, cap=self._retry_cap, retry_after=outcome.retry_after)
            outcome.retry_after = delay
            if attempt >= self._max_attempts or delay > self._max_inline_wait:
                raise outcome
            if self._flow is None or outcome.status != 429:
                await self._sleep(delay)  # with flow control, a 429's pause is waited for in acquire()
            attempt += 1

    async def _limited_attempt(
        self, route: str, url: str, content: bytes, key: str, attempt: int
    ) -> GatewayResponse | GatewayError:
        """One attempt under the route's permit (``GatewayHeld`` propagates: nothing was sent)."""
        if self._flow is None:
            return await self._attempt(route, url, content, key, attempt)
        permit = await self._flow.acquire(route)
        started = time.perf_counter()
        outcome: GatewayResponse | GatewayError | None = None
        try:
            outcome = await self._attempt(route, url, content, key, attempt)
            return outcome
        finally:
            await self._flow.release(permit, outcome, time.perf_counter() - started, attempt=attempt)

    async def _attempt(
        self, route: str, url: str, content: bytes, key: str, attempt: int
    ) -> GatewayResponse | GatewayError:
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Idempotency-Key": key,
            "X-Client-Request-Id": str(uuid.uuid4()),
            "Content-Type": "application/json",
            "Accept": "application/json, audio/*",
        }
        fields = {"route": route, "idempotency_key": key, "attempt": attempt}
        room = self._room
        pool = room.index(max(room))
        room[pool] -= 1
        try:
            response = await self._clients[pool].post(url, content=content, headers=headers)
        except httpx.TimeoutException as exc:
            error: GatewayError = GatewayTransientError(
                f"gateway {route} timed out ({type(exc).__name__})", code="gateway_timeout"
            )
        except httpx.TransportError as exc:
            error = GatewayTransientError(
                f"gateway {route} unreachable ({type(exc).__name__})", code="gateway_unreachable"
            )
        else:
            request_id = response.headers.get("x-request-id")
            replayed = response.headers.get("idempotent-replayed", "").lower() == "true"
            level = self._log.info if response.is_success else self._log.warning
            level("gateway.call", status=response.status_code, request_id=request_id, replayed=replayed, **fields)
            if response.is_success:
                return GatewayResponse(
                    status=response.status_code,
                    content=response.content,
                    content_type=response.headers.get("content-type", ""),
                    request_id=request_id,
                    replayed=replayed,
                )
            return self._http_error(route, response, request_id)
        finally:
            room[pool] += 1
        self._log.warning("gateway.call", status=None, request_id=None, replayed=False, code=error.code, **fields)
        return error

    def _http_error(self, route: str, response: httpx.Response, request_id: str | None) -> GatewayError:
        status = response.status_code
        error_type, message = _error_body(response.content)
        detail = f"gateway {route} answered {status}" + (f" {error_type}" if error_type else "")
        if message:
            detail += f": {message}"
        detail = " ".join(detail.replace(self._api_key, "[redacted]").split())
        if status in _TRANSIENT_STATUSES or status >= 500:
            return GatewayTransientError(
                detail,
                code=_STATUS_CODES.get(status, "gateway_unavailable"),
                status=status,
                error_type=error_type,
                request_id=request_id,
                retry_after=parse_retry_after(response.headers.get("retry-after"), time.time()),
            )
        return GatewayPermanentError(
            detail,
            code=_STATUS_CODES.get(status, "gateway_rejected"),
            status=status,
            error_type=error_type,
            request_id=request_id,
        )


def _error_body(content: bytes) -> tuple[str | None, str]:
    """(error type, one-line message) from an OpenAI-style ``{"error": {...}}`` body, tolerating anything."""
    try:
        data = json.loads(content)
    except ValueError:
        return None, ""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None, ""
    error_type = error.get("type")
    message = error.get("message")
    text = " ".join(message.split())[:_MAX_MESSAGE] if isinstance(message, str) else ""
    return (error_type if isinstance(error_type, str) else None), text
