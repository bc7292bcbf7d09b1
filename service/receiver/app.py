"""The receiver's app factory: settings in, a Starlette app out. No globals, no import-time I/O."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runinfra_webhooks.handlers.registry import Registry, load_registry
from runinfra_webhooks.service.receiver.metrics import ReceiverMetrics
from runinfra_webhooks.service.receiver.problems import (
    MethodNotAllowed,
    NotFound,
    Problem,
    Unavailable,
    problem_response,
)
from runinfra_webhooks.service.receiver.request_id import RequestIdMiddleware, request_id_of
from runinfra_webhooks.service.receiver.webhook import PATH, Receiver, WebhookRoute
from runinfra_webhooks.service.settings import ReceiverSettings
from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.connection import COMMAND_TIMEOUT_S, STORAGE_ERRORS, connect, persistence
from runinfra_webhooks.service.storage.ingest import Ingestor
from runinfra_webhooks.service.storage.redis_errors import classify
from runinfra_webhooks.service.tracing import NO_TRACING, Tracing

__all__ = ["create_app"]

log = structlog.get_logger("service.app")


def create_app(settings: ReceiverSettings, *, redis: Redis | None = None, registry: Registry | None = None,
               tracing: Tracing = NO_TRACING) -> Starlette:
    """Build the receiver. ``redis`` may be passed in (tests); otherwise it comes from REDIS_URL.

    ``registry`` says which types outside the catalogue are queued; by default it is loaded from the settings
    (raises HandlerLoadError when a handler module does not load). ``tracing`` (from ``setup_tracing``) adds
    the server span of each request and keeps its context with the record.
    """
    if registry is None:
        registry = load_registry(builtin=settings.builtin_reactions, modules=settings.handler_modules)
    # No per-read socket timeout (redis-py would arm a timer for every reply): the ingest bounds each
    # coalesced round trip, and every other call here has its own bound.
    client = redis if redis is not None else connect(settings.redis_url, socket_timeout=None)
    metrics = ReceiverMetrics()
    receiver = Receiver(
        settings=settings,
        ingestor=Ingestor(
            client,
            dedup_ttl=settings.dedup_ttl,
            event_retention=settings.event_retention,
            dead_letter_retention=settings.dead_letter_retention,
            job_expiry_s=settings.lost_deadline,
            secrets=settings.secret_values(),
            audit_retention=settings.audit_retention,
            timeout=COMMAND_TIMEOUT_S,
        ),
        metrics=metrics,
        secrets=settings.secret_values(),
        extra_types=registry.queued_types(),
        traceparent=tracing.current_traceparent if tracing.enabled else None,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                p = await persistence(client)
            if p.warning:
                log.warning("redis.persistence", **p.as_json())
        except STORAGE_ERRORS as exc:
            log.warning("redis.unreachable_at_startup", error=type(exc).__name__)
        yield
        if redis is None:
            await client.aclose()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        # Ready means "a delivery would be accepted now": a PING passes while Redis refuses writes (maxmemory
        # reached, CLIENT PAUSE WRITE, a read-only replica), so the probe is a write, bounded in time.
        try:
            async with asyncio.timeout(settings.ready_probe_timeout):
                await client.set(keys.READY_PROBE, time.time_ns() // 1_000_000, px=60_000)
                p = await persistence(client)
        except TimeoutError:
            raise Unavailable("Redis did not accept a write in time (paused or overloaded)",
                              headers={"Retry-After": "5"}) from None
        except STORAGE_ERRORS as exc:
            failure = classify(exc)
            reason = failure.code if failure is not None else type(exc).__name__
            raise Unavailable(f"Redis does not accept writes now ({reason})", headers={"Retry-After": "5"}) from None
        return JSONResponse({"status": "ready", "redis": "ok", "persistence": p.as_json()})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def render_problem(request: Request, exc: Exception) -> Response:
        rid = request_id_of(request.scope)
        if isinstance(exc, Problem):
            return problem_response(exc, rid)
        if isinstance(exc, HTTPException):
            if exc.status_code == 405:
                allowed = {"Allow": (exc.headers or {}).get("Allow", "")}
                return problem_response(MethodNotAllowed(f"{request.method} is not allowed here",
                                                         headers=allowed), rid)
            if exc.status_code == 404:
                return problem_response(NotFound(f"no route for {request.url.path}"), rid)
            return problem_response(Problem(str(exc.detail), code="http_error", status=exc.status_code), rid)
        log.error("receiver.unhandled", request_id=rid, error=type(exc).__name__)
        return problem_response(Problem("unexpected error; nothing was acknowledged"), rid)

    app = Starlette(
        routes=[
            # POST is answered by WebhookRoute before the router; the route makes any other method a 405.
            Route(PATH, receiver, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        middleware=[*tracing.middleware(), Middleware(WebhookRoute, receiver=receiver),
                    Middleware(RequestIdMiddleware)],
        exception_handlers={Problem: render_problem, HTTPException: render_problem, Exception: render_problem},
        lifespan=lifespan,
    )
    # A trailing-slash variant of a route would otherwise be answered 307 with a Location built from the
    # client's Host header; every path is exact and anything else is a 404 or 405 problem document.
    app.router.redirect_slashes = False
    return app
