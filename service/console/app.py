"""The console's app factory: settings in, a Starlette app out (its own process and port, never the
receiver's). Pages and the JSON API read the same Redis as the receiver and the workers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib import resources

import structlog
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from runinfra_webhooks.service.console.access import SecurityHeadersMiddleware, Sessions
from runinfra_webhooks.service.console.api import api_routes
from runinfra_webhooks.service.console.context import Console, now_ms
from runinfra_webhooks.service.console.pages import page_routes
from runinfra_webhooks.service.receiver.problems import (
    MethodNotAllowed,
    NotFound,
    Problem,
    Unavailable,
    problem_response,
)
from runinfra_webhooks.service.receiver.request_id import RequestIdMiddleware, request_id_of
from runinfra_webhooks.service.settings import ConsoleSettings
from runinfra_webhooks.service.storage.connection import STORAGE_ERRORS, connect
from runinfra_webhooks.service.storage.event_index import needs_rebuild, rebuild
from runinfra_webhooks.service.storage.listing import EventIndex
from runinfra_webhooks.service.storage.records import Records
from runinfra_webhooks.service.tracing import NO_TRACING, Tracing

__all__ = ["ConsoleNotConfigured", "create_console_app"]

log = structlog.get_logger("service.console")


class ConsoleNotConfigured(Exception):
    """RUNINFRA_CONSOLE_TOKEN is not set."""


_MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".txt": "text/plain"}


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The console's few static files, read once into memory: served from a fixed table, no path lookup."""
    folder = resources.files("runinfra_webhooks.service.console").joinpath("static")
    out = {}
    for item in folder.iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if suffix in _MEDIA_TYPES:
            out[item.name] = (item.read_bytes(), _MEDIA_TYPES[suffix] + ("; charset=utf-8"))
    return out


class _ConsoleApp(Starlette):
    """Security headers outermost, so even the answer to an unexpected error (made by Starlette's
    ServerErrorMiddleware, outside the user middleware) carries them."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeadersMiddleware(super().build_middleware_stack())


def create_console_app(settings: ConsoleSettings, *, redis: Redis | None = None, reindex: bool = False,
                       tracing: Tracing = NO_TRACING) -> Starlette:
    """``reindex``: index every stored record at start-up; done anyway when records exist but no index does
    (data written before the console's indexes). ``tracing`` (from ``setup_tracing``) adds a server span per
    request."""
    if settings.console_token is None:
        msg = "RUNINFRA_CONSOLE_TOKEN: required setting is not set (at least 32 characters)"
        raise ConsoleNotConfigured(msg)
    client = redis if redis is not None else connect(settings.redis_url)
    console = Console(
        settings=settings, redis=client,
        records=Records(client, event_retention=settings.event_retention,
                        dead_letter_retention=settings.dead_letter_retention, job_expiry_s=settings.lost_deadline),
        index=EventIndex(client), sessions=Sessions(client, settings.console_session_ttl),
        token=settings.console_token.get_secret_value(),
    )

    async def backfill() -> None:
        try:
            if reindex or await needs_rebuild(client):
                log.info("console.reindex.started")
                count = await rebuild(client, now_ms())
                log.info("console.reindex.done", indexed=count)
        except STORAGE_ERRORS as exc:
            log.warning("console.reindex.failed", error=type(exc).__name__)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(backfill())  # pages answer meanwhile, listing what is indexed so far
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if redis is None:
            await client.aclose()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def render_problem(request: Request, exc: Exception) -> Response:
        rid = request_id_of(request.scope)
        api = request.url.path.startswith("/api/")
        if isinstance(exc, STORAGE_ERRORS):
            exc = Unavailable("Redis does not answer", headers={"Retry-After": "5"})
        if isinstance(exc, HTTPException):
            if exc.status_code == 405:
                exc = MethodNotAllowed(f"{request.method} is not allowed here",
                                       headers={"Allow": (exc.headers or {}).get("Allow", "")})
            elif exc.status_code == 404:
                exc = NotFound(f"no route for {request.url.path}")
            else:
                exc = Problem(str(exc.detail), code="http_error", status=exc.status_code)
        if not isinstance(exc, Problem):
            log.error("console.unhandled", request_id=rid, error=type(exc).__name__)
            exc = Problem("unexpected error; nothing was changed")
        if api:
            return problem_response(exc, rid)
        return HTMLResponse(f"<!doctype html><title>{exc.status_code}</title><p>{exc.status_code}: {exc.title}</p>",
                            status_code=exc.status_code, headers=exc.headers)

    static_files = _static_files()

    async def static(request: Request) -> Response:
        found = static_files.get(request.path_params["name"])
        if found is None:
            raise NotFound("no such file")
        body, media_type = found
        return Response(body, media_type=media_type, headers={"cache-control": "public, max-age=3600"})
    return _ConsoleApp(
        routes=[
            *api_routes(console),
            *page_routes(console),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/static/{name:str}", static, methods=["GET"]),
        ],
        middleware=[*tracing.middleware(), Middleware(RequestIdMiddleware)],
        exception_handlers={Problem: render_problem, HTTPException: render_problem, Exception: render_problem},
        lifespan=lifespan,
    )
