"""The console's HTML pages, rendered on the server from autoescaped templates.

A page without a session answers 303 to /login. Every form POST that changes anything carries the
session's CSRF token (field ``csrf_token``); without it, or with another session's, the answer is 403 and
nothing is done.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from runinfra_webhooks.handlers.deployments import list_deployments
from runinfra_webhooks.service.console.access import COOKIE, Session, token_ok
from runinfra_webhooks.service.console.charts import deliveries_chart
from runinfra_webhooks.service.console.context import Console, now_ms
from runinfra_webhooks.service.console.filters import FilterError, parse_filter
from runinfra_webhooks.service.console.operations import ReplayRefused, replay_matching, replay_one, verify_audit
from runinfra_webhooks.service.core.events import CATALOGUE
from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.event_index import STATES
from runinfra_webhooks.service.storage.listing import BadCursor, Cursor, EventFilter

__all__ = ["page_routes", "template_env"]

PageHandler = Callable[[Request, Session], Awaitable[Response]]


def _iso(ms: Any) -> str:
    if not ms:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(ms) / 1000)) + f".{int(ms) % 1000:03d}Z"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "none queued"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def template_env() -> Environment:
    # Autoescape everything: event payloads are attacker-controlled text and must stay inert.
    env = Environment(loader=PackageLoader("runinfra_webhooks.service.console", "templates"), autoescape=True)
    env.filters["iso"] = _iso
    env.filters["age"] = _age
    return env


def page_routes(console: Console) -> list[Route]:
    env = template_env()

    def render(name: str, request: Request, session: Session | None, status: int = 200, **ctx: Any) -> Response:
        html = env.get_template(name).render(request=request, csrf=session.csrf if session else "",
                                             signed_in=session is not None, path=request.url.path, **ctx)
        return HTMLResponse(html, status_code=status)

    async def session_of(request: Request) -> Session | None:
        return await console.sessions.get(request.cookies.get(COOKIE))

    def page(handler: PageHandler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = await session_of(request)
            if session is None:
                return RedirectResponse("/login", status_code=303)
            return await handler(request, session)
        return endpoint

    def form_post(handler: Callable[[Request, Session, FormData], Awaitable[Response]]
                  ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = await session_of(request)
            if session is None:
                return RedirectResponse("/login", status_code=303)
            form = await request.form()
            if not session.csrf_ok(form.get("csrf_token")):
                return render("error.html", request, session, status=403, title="Forbidden",
                              message="The form's CSRF token is missing or belongs to another session. "
                                      "Nothing was changed; reload the page and try again.")
            return await handler(request, session, form)
        return endpoint

    # --- sign in and out -------------------------------------------------------------------------
    async def login_form(request: Request) -> Response:
        return render("login.html", request, None)

    async def login(request: Request) -> Response:
        form = await request.form()
        given = form.get("token")
        if not isinstance(given, str) or not token_ok(given, console.token):
            return render("login.html", request, None, status=401, error="That token is not the console token.")
        value, _ = await console.sessions.create()
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, value, max_age=console.settings.console_session_ttl, path="/", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    async def logout(request: Request, session: Session, form: FormData) -> Response:
        await console.sessions.end(session)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # --- pages -----------------------------------------------------------------------------------
    async def overview(request: Request, session: Session) -> Response:
        stats = await console.index.stats(now_ms())
        return render("overview.html", request, session, stats=stats,
                      chart=deliveries_chart(stats["deliveries_last_hour"]))

    def _filter(request: Request) -> tuple[EventFilter, Cursor | None, str | None]:
        try:
            f = parse_filter(request.query_params)
            raw = request.query_params.get("cursor")
            return f, Cursor.decode(raw) if raw else None, None
        except (FilterError, BadCursor) as exc:
            return EventFilter(), None, str(exc)

    async def events(request: Request, session: Session) -> Response:
        f, cursor, error = _filter(request)
        page = await console.index.page(f, cursor)
        more = urlencode({**f.as_query(), "cursor": page.next_cursor}) if page.next_cursor else None
        return render("events.html", request, session, page=page, filter=f, error=error, states=STATES,
                      types=await console.index.types(CATALOGUE), next_query=more, params=request.query_params)

    async def event(request: Request, session: Session) -> Response:
        detail = await console.index.detail(request.path_params["event_id"])
        if detail is None:
            return render("error.html", request, session, status=404, title="No such event",
                          message="Never received, or past its retention.")
        pretty = json.dumps(detail["envelope"], indent=2, ensure_ascii=False) if detail["envelope"] is not None \
            else detail["body"]
        return render("event.html", request, session, e=detail, pretty=pretty,
                      notice=request.query_params.get("notice"))

    async def replay_event(request: Request, session: Session, form: FormData) -> Response:
        event_id = request.path_params["event_id"]
        try:
            generation = await replay_one(console.records, event_id)
            notice = f"replayed: queued as generation {generation}"
        except ReplayRefused:
            notice = "not replayed: the event is not dead-lettered"
        return RedirectResponse(f"/events/{event_id}?{urlencode({'notice': notice})}", status_code=303)

    async def dead_letters(request: Request, session: Session) -> Response:
        f, cursor, error = _filter(request)
        f = EventFilter(state="dead_lettered", type=f.type, since_ms=f.since_ms, until_ms=f.until_ms, q=f.q)
        page = await console.index.page(f, cursor)
        query = {k: v for k, v in f.as_query().items() if k != "state"}
        more = urlencode({**query, "cursor": page.next_cursor}) if page.next_cursor else None
        return render("dead_letters.html", request, session, page=page, filter=f, error=error,
                      types=await console.index.types(CATALOGUE), next_query=more, query=query,
                      notice=request.query_params.get("notice"))

    async def replay_dead(request: Request, session: Session, form: FormData) -> Response:
        action = form.get("action")
        ids = [str(v) for v in form.getlist("event_id")] if action == "selected" else None
        try:
            f = parse_filter({k: form.get(k) for k in ("type", "since", "until", "q")})
        except FilterError as exc:
            return render("error.html", request, session, status=400, title="Bad filter", message=str(exc))
        if action == "selected" and not ids:
            return RedirectResponse("/dead-letters?" + urlencode({"notice": "nothing selected"}), status_code=303)
        confirmed = form.get("confirm") == "yes"
        result = await replay_matching(console.records, console.index, f, dry_run=not confirmed, ids=ids)
        if not confirmed:
            return render("replay_confirm.html", request, session, result=result, ids=ids or [],
                          query={k: v for k, v in f.as_query().items() if k != "state"}, action=action)
        notice = f"{result['replayed']} of {result['matched']} dead-lettered event(s) replayed"
        return RedirectResponse("/dead-letters?" + urlencode({"notice": notice}), status_code=303)

    async def deployments(request: Request, session: Session) -> Response:
        return render("deployments.html", request, session, rows=await list_deployments(console.redis))

    async def corpus(request: Request, session: Session) -> Response:
        return render("corpus.html", request, session, rows=await _collections(console))

    async def audit(request: Request, session: Session) -> Response:
        stats = await console.index.stats(now_ms())
        return render("audit.html", request, session, head=stats["audit_head"], result=None)

    async def audit_verify(request: Request, session: Session, form: FormData) -> Response:
        result = await verify_audit(console.redis, **console.verify_args())
        return render("audit.html", request, session, head=result["head"], result=result)

    return [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", form_post(logout), methods=["POST"]),
        Route("/", page(overview), methods=["GET"]),
        Route("/events", page(events), methods=["GET"]),
        Route("/events/{event_id:str}", page(event), methods=["GET"]),
        Route("/events/{event_id:str}/replay", form_post(replay_event), methods=["POST"]),
        Route("/dead-letters", page(dead_letters), methods=["GET"]),
        Route("/dead-letters/replay", form_post(replay_dead), methods=["POST"]),
        Route("/deployments", page(deployments), methods=["GET"]),
        Route("/corpus", page(corpus), methods=["GET"]),
        Route("/audit", page(audit), methods=["GET"]),
        Route("/audit/verify", form_post(audit_verify), methods=["POST"]),
    ]


async def _collections(console: Console) -> list[dict[str, Any]]:
    """Each corpus collection: its model, active revision, and the progress of any build under way."""
    redis = console.redis
    names = {n.decode() for n in await redis.smembers(keys.CORPORA)}  # type: ignore[misc]
    # Collections loaded before that set existed are still found through their deployments' models.
    for model in {d.get("model") for d in await list_deployments(redis)} - {None, ""}:
        names |= {n.decode() for n in await redis.smembers(keys.corpora_by_model(str(model)))}  # type: ignore[misc]
    names_sorted = sorted(names)
    rows = []
    for name in names_sorted:
        meta = {k.decode(): v.decode() for k, v in (await redis.hgetall(keys.corpus_meta(name))).items()}  # type: ignore[misc]
        if not meta:
            continue
        documents = int(await redis.llen(keys.corpus_ids(name)))  # type: ignore[misc]
        builds = []
        for field, marker in meta.items():
            if not field.startswith("build:"):
                continue
            revision = field.removeprefix("build:")
            try:
                size = int(json.loads(marker).get("batch_size", 1)) or 1
            except (ValueError, AttributeError):
                size = 1
            done = int(await redis.get(keys.corpus_progress(name, revision)) or 0)
            total = max(math.ceil(documents / size), 1)
            builds.append({"revision": revision, "done": done, "total": total,
                           "percent": min(100, round(done * 100 / total))})
        rows.append({"collection": name, "model": meta.get("model", ""), "revision": meta.get("revision"),
                     "documents": documents, "builds": builds})
    return rows
