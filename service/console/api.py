"""The console's JSON API under /api/v1 (described in openapi.yaml). Every route needs the bearer token."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runinfra_webhooks.handlers.deployments import list_deployments
from runinfra_webhooks.service.console.access import bearer_ok
from runinfra_webhooks.service.console.context import Console, now_ms
from runinfra_webhooks.service.console.filters import FilterError, parse_filter
from runinfra_webhooks.service.console.operations import ReplayRefused, replay_matching, replay_one, verify_audit
from runinfra_webhooks.service.receiver.problems import NotFound, Problem
from runinfra_webhooks.service.storage.listing import BadCursor, Cursor

__all__ = ["Unauthorized", "api_routes"]

Handler = Callable[[Request], Awaitable[Response]]


class Unauthorized(Problem):
    status, code, title = 401, "unauthorized", "A valid console token is required"


class InvalidRequest(Problem):
    status, code, title = 400, "invalid_request", "The request is not valid"


class NotDeadLettered(Problem):
    status, code, title = 409, "not_dead_lettered", "Only a dead-lettered event can be replayed"


def _limit(raw: str | None) -> int:
    if raw is None:
        return 50
    if not raw.isdigit() or not 1 <= int(raw) <= 200:
        raise InvalidRequest("limit: an integer from 1 to 200", code="invalid_filter")
    return int(raw)


def api_routes(console: Console) -> list[Route]:
    def guarded(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            if not bearer_ok(request.headers.get("authorization"), console.token):
                raise Unauthorized("send Authorization: Bearer <RUNINFRA_CONSOLE_TOKEN>",
                                   headers={"WWW-Authenticate": 'Bearer realm="runinfra-console"'})
            return await handler(request)
        return endpoint

    async def list_events(request: Request) -> Response:
        try:
            f = parse_filter(request.query_params)
            cursor = Cursor.decode(request.query_params["cursor"]) if request.query_params.get("cursor") else None
        except FilterError as exc:
            raise InvalidRequest(str(exc), code="invalid_filter") from None
        except BadCursor as exc:
            raise InvalidRequest(str(exc), code="invalid_cursor") from None
        page = await console.index.page(f, cursor, _limit(request.query_params.get("limit")))
        return JSONResponse({"items": page.items, "next_cursor": page.next_cursor})

    async def show_event(request: Request) -> Response:
        detail = await console.index.detail(request.path_params["event_id"])
        if detail is None:
            raise NotFound("no such event (never received, or past its retention)")
        return JSONResponse(detail)

    async def replay_event(request: Request) -> Response:
        event_id = request.path_params["event_id"]
        try:
            generation = await replay_one(console.records, event_id)
        except ReplayRefused:
            if await console.records.get(event_id) is None:
                raise NotFound("no such event (never received, or past its retention)") from None
            raise NotDeadLettered(f"event {event_id} is not dead-lettered") from None
        return JSONResponse({"event_id": event_id, "status": "queued", "generation": generation})

    async def replay_many(request: Request) -> Response:
        try:
            body: Any = json.loads(await request.body() or b"{}")
        except ValueError:
            raise InvalidRequest("the body is not JSON", code="invalid_json") from None
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object", code="invalid_json")
        if "filter" in body:  # {"filter": {...}, "dry_run": ...} reads the same
            nested = body.pop("filter")
            if not isinstance(nested, dict):
                raise InvalidRequest("filter: a JSON object", code="invalid_filter")
            body = {**nested, **body}
        for name in ("state", "type", "since", "until", "q"):
            if name in body and not isinstance(body[name], str):
                raise InvalidRequest(f"{name}: must be a string", code="invalid_filter")
        dry_run = body.get("dry_run", True)
        ids = body.get("event_ids")
        if not isinstance(dry_run, bool):
            raise InvalidRequest("dry_run: true or false", code="invalid_filter")
        if "event_ids" in body and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            raise InvalidRequest("event_ids: a list of event ids", code="invalid_filter")
        if body.get("state", "dead_lettered") not in ("", "dead_lettered"):
            raise InvalidRequest("state: only dead-lettered events are replayed", code="invalid_filter")
        try:
            f = parse_filter({k: v for k, v in body.items() if k in ("type", "since", "until", "q")})
        except FilterError as exc:
            raise InvalidRequest(str(exc), code="invalid_filter") from None
        return JSONResponse(await replay_matching(console.records, console.index, f, dry_run=dry_run, ids=ids))

    async def stats(request: Request) -> Response:
        return JSONResponse(await console.index.stats(now_ms()))

    async def deployments(request: Request) -> Response:
        return JSONResponse({"items": await list_deployments(console.redis)})

    async def audit_verify(request: Request) -> Response:
        return JSONResponse(await verify_audit(console.redis, **console.verify_args()))

    return [
        Route("/api/v1/events", guarded(list_events), methods=["GET"]),
        Route("/api/v1/events/{event_id:str}", guarded(show_event), methods=["GET"]),
        Route("/api/v1/events/{event_id:str}/replay", guarded(replay_event), methods=["POST"]),
        Route("/api/v1/replay", guarded(replay_many), methods=["POST"]),
        Route("/api/v1/stats", guarded(stats), methods=["GET"]),
        Route("/api/v1/deployments", guarded(deployments), methods=["GET"]),
        Route("/api/v1/audit/verify", guarded(audit_verify), methods=["POST"]),
    ]
