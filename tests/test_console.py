"""The operations console over Starlette's test client, on real Redis: access rules, CSRF, headers, the
pages, the JSON API, paging by cursor, filters, replay (dry run and real) and what no answer may hold."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis
from redis.asyncio import Redis
from starlette.testclient import TestClient

from runinfra_webhooks.handlers.corpus import load_corpus
from runinfra_webhooks.service.console.access import SECURITY_HEADERS
from runinfra_webhooks.service.console.app import create_console_app
from runinfra_webhooks.service.settings import Settings
from runinfra_webhooks.service.storage import keys
from tests.builders import OLD_SECRET, SECRET
from tests.conftest import make_settings
from tests.console_seed import TOKEN, seed
from tests.processes import cli

PAGES = ["/", "/events", "/events/evt_x", "/dead-letters", "/deployments", "/corpus", "/audit"]
FORM_POSTS = ["/logout", "/events/evt_x/replay", "/dead-letters/replay", "/audit/verify"]
API = [("GET", "/api/v1/events"), ("GET", "/api/v1/events/evt_x"), ("POST", "/api/v1/events/evt_x/replay"),
       ("POST", "/api/v1/replay"), ("GET", "/api/v1/stats"), ("GET", "/api/v1/deployments"),
       ("POST", "/api/v1/audit/verify")]
BEARER = {"Authorization": f"Bearer {TOKEN}"}
API_KEY = "sk-console-test-key-never-shown"


@pytest.fixture
def console_settings(redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(redis_url, tmp_path, RUNINFRA_CONSOLE_TOKEN=TOKEN, RUNINFRA_API_KEY=API_KEY)


@pytest.fixture
def client(console_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_console_app(console_settings), follow_redirects=False) as c:
        yield c


def login(client: TestClient) -> str:
    """Sign in; returns the session's CSRF token as the pages carry it."""
    answer = client.post("/login", data={"token": TOKEN})
    assert answer.status_code == 303
    return csrf_of(client.get("/").text)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def state_of(client: TestClient, event_id: str) -> str:
    state: str = client.get(f"/api/v1/events/{event_id}", headers=BEARER).json()["state"]
    return state


# --- access ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PAGES)
def test_pages_redirect_to_login_without_a_session(client: TestClient, path: str) -> None:
    """Every page answers 303 to /login without a session cookie."""
    answer = client.get(path)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login"


@pytest.mark.parametrize(("method", "path"), API)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token-wrong-token-wrong-token", f"Basic {TOKEN}"])
def test_api_answers_401_problem_without_the_bearer_token(client: TestClient, method: str, path: str,
                                                          authorization: str | None) -> None:
    """No token, a wrong one, or the right one in another scheme: 401 problem+json, code unauthorized."""
    headers = {"Authorization": authorization} if authorization else {}
    answer = client.request(method, path, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "unauthorized"


def test_api_session_cookie_alone_does_not_open_the_api(client: TestClient) -> None:
    """A signed-in browser session is not a bearer token: the API still answers 401."""
    login(client)
    assert client.get("/api/v1/stats").status_code == 401


def test_rejects_wrong_login_token_with_401_and_no_session(client: TestClient) -> None:
    """POST /login with a wrong token: 401, no cookie, and pages still redirect."""
    answer = client.post("/login", data={"token": "x" * 40})
    assert answer.status_code == 401
    assert "set-cookie" not in answer.headers
    assert client.get("/").status_code == 303


def test_login_sets_an_httponly_samesite_strict_cookie_and_redirects_home(client: TestClient) -> None:
    """The right token: 303 to /, a session cookie with HttpOnly and SameSite=Strict, pages open."""
    answer = client.post("/login", data={"token": TOKEN})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/"
    cookie = answer.headers["set-cookie"]
    assert "httponly" in cookie.lower()
    assert "samesite=strict" in cookie.lower()
    assert TOKEN not in cookie
    assert client.get("/").status_code == 200


def test_logout_ends_the_session_on_the_server(client: TestClient) -> None:
    """After POST /logout the old cookie, sent again, no longer opens a page."""
    csrf = login(client)
    cookie = client.cookies.get("rwh_console")
    assert cookie
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 303
    client.cookies.set("rwh_console", cookie)
    assert client.get("/").status_code == 303


@pytest.mark.parametrize("path", FORM_POSTS)
def test_rejects_form_posts_without_csrf_token(client: TestClient, path: str) -> None:
    """A signed-in form POST without the CSRF token is 403."""
    login(client)
    assert client.post(path, data={}).status_code == 403
    assert client.get("/").status_code == 200  # the session was not ended either


def test_rejects_another_sessions_csrf_token_and_replays_nothing(client: TestClient, redis_url: str,
                                                                 console_settings: Settings) -> None:
    """A CSRF token of another session: 403, and the dead-lettered event stays dead-lettered."""
    (dead,) = seed(redis_url, [("deployment.failed", "dead_lettered", None)])
    with TestClient(create_console_app(console_settings), follow_redirects=False) as other:
        foreign = login(other)
    login(client)
    answer = client.post(f"/events/{dead.event_id}/replay", data={"csrf_token": foreign})
    assert answer.status_code == 403
    answer = client.post("/dead-letters/replay", data={"csrf_token": foreign, "action": "matching", "confirm": "yes"})
    assert answer.status_code == 403
    assert state_of(client, dead.event_id) == "dead_lettered"


def test_refuses_to_start_without_a_console_token(tmp_path: Path, redis_url: str) -> None:
    """`runinfra-webhooks console` without RUNINFRA_CONSOLE_TOKEN exits 2 with one line naming it."""
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url}
    done = cli(env, "console", "--port", "1")
    assert done.returncode == 2
    assert "RUNINFRA_CONSOLE_TOKEN" in done.stderr


def test_refuses_a_console_token_shorter_than_32_characters(tmp_path: Path, redis_url: str) -> None:
    """A short token is a bad setting: exit 2, and the message shows no part of it."""
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url, "RUNINFRA_CONSOLE_TOKEN": "short-token-value"}
    done = cli(env, "console")
    assert done.returncode == 2
    assert "RUNINFRA_CONSOLE_TOKEN" in done.stderr
    assert "short-token-value" not in done.stderr


# --- headers ---------------------------------------------------------------------------------------
def test_every_response_carries_the_security_headers(client: TestClient) -> None:
    """Pages, redirects, the login page, API answers (200 and 401), static files and 404s all carry them."""
    answers = [client.get("/"), client.get("/login"), client.get("/api/v1/stats"),
               client.get("/static/htmx.min.js"), client.get("/no-such-page"),
               client.post("/login", data={"token": "nope"})]
    login(client)
    answers += [client.get(p) for p in PAGES] + [client.get("/api/v1/events", headers=BEARER)]
    for answer in answers:
        for name, value in SECURITY_HEADERS.items():
            assert answer.headers.get(name) == value, (answer.url, name)
        csp = answer.headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert "unsafe-eval" not in csp


def test_pages_load_scripts_only_from_the_console_itself(client: TestClient) -> None:
    """No inline script and no script from elsewhere: only /static/ files (htmx is served by the console)."""
    login(client)
    for path in [*PAGES[:2], "/login"]:
        html = client.get(path).text
        for tag in re.findall(r"<script[^>]*>", html):
            assert re.search(r'src="/static/[a-z.]+\.js"', tag), tag
        assert "<script>" not in html
        outside = html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # a namespace name, never fetched
        assert "http://" not in outside and "https://" not in outside
    htmx = client.get("/static/htmx.min.js")
    assert htmx.status_code == 200 and "htmx" in htmx.text


# --- pages -----------------------------------------------------------------------------------------
def test_event_page_shows_payload_markup_as_inert_text(client: TestClient, redis_url: str) -> None:
    """<script> and <img onerror> in an event's data are escaped in the page, never markup."""
    payload = {"text": "<script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">"}
    (e,) = seed(redis_url, [("transcription.completed", "succeeded", payload)])
    login(client)
    html = client.get(f"/events/{e.event_id}").text
    assert "<script>window.pwned" not in html
    assert "<img src=x" not in html
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in html
    assert "onerror=" in html  # present as text inside the escaped payload


def test_event_page_shows_envelope_signature_audit_history_and_gateway_calls(client: TestClient,
                                                                            redis_url: str) -> None:
    """The event page holds the envelope, signature header, audit seq/hash, each transition and the calls."""
    (e,) = seed(redis_url, [("transcription.completed", "succeeded", None)])
    login(client)
    html = client.get(f"/events/{e.event_id}").text
    detail = client.get(f"/api/v1/events/{e.event_id}", headers=BEARER).json()
    assert detail["envelope"]["id"] == e.event_id
    assert [h["state"] for h in detail["history"]] == ["queued", "processing", "succeeded"]
    assert detail["gateway_calls"][0]["idempotency_key"].startswith("rwh_key_")
    assert detail["audit"]["seq"] >= 1
    for text in (detail["audit"]["signature_header"], detail["audit"]["hash"], "rwh_key_0", "gw-0", "processing"):
        assert text in html


def test_overview_shows_counts_per_state_and_the_chart(client: TestClient, redis_url: str) -> None:
    """The overview counts events per state and draws the last hour's deliveries as an SVG chart."""
    seed(redis_url, [("deployment.ready", "succeeded", None), ("deployment.failed", "dead_lettered", None),
                     ("deployment.created", "queued", None)])
    login(client)
    html = client.get("/").text
    assert re.search(r'id="count-succeeded">1<', html)
    assert re.search(r'id="count-dead_lettered">1<', html)
    assert '<svg id="deliveries-chart"' in html
    assert html.count('class="bar"') >= 1


def test_dead_letters_replay_matching_shows_the_count_before_replaying(client: TestClient, redis_url: str) -> None:
    """'Replay all that match' first answers a confirmation page with the count; only the confirmation replays."""
    seeded = seed(redis_url, [*[("deployment.failed", "dead_lettered", None)] * 2,
                              ("deployment.ready", "dead_lettered", None), ("deployment.ready", "succeeded", None)])
    csrf = login(client)
    ask = client.post("/dead-letters/replay",
                      data={"csrf_token": csrf, "action": "matching", "type": "deployment.failed"})
    assert ask.status_code == 200
    assert re.search(r'id="replay-count">2<', ask.text)
    assert all(state_of(client, s.event_id) == s.state for s in seeded)
    done = client.post("/dead-letters/replay", data={"csrf_token": csrf, "action": "matching",
                                                     "type": "deployment.failed", "confirm": "yes"})
    assert done.status_code == 303
    assert [state_of(client, s.event_id) for s in seeded] == ["queued", "queued", "dead_lettered", "succeeded"]


def test_dead_letters_replay_selected_replays_only_those(client: TestClient, redis_url: str) -> None:
    """Replaying the selected dead letters leaves the others parked."""
    a, b = seed(redis_url, [("deployment.failed", "dead_lettered", None)] * 2)
    csrf = login(client)
    answer = client.post("/dead-letters/replay", data={"csrf_token": csrf, "action": "selected",
                                                       "event_id": [b.event_id], "confirm": "yes"})
    assert answer.status_code == 303
    assert (state_of(client, a.event_id), state_of(client, b.event_id)) == ("dead_lettered", "queued")


def test_audit_page_verifies_the_log(client: TestClient, redis_url: str) -> None:
    """The audit page shows the head; its verify button reports the whole chain verified."""
    seed(redis_url, [("deployment.ready", "succeeded", None)] * 3)
    csrf = login(client)
    assert 'id="audit-head-seq">3<' in client.get("/audit").text
    assert "3 entries, signatures and chain verified" in client.post("/audit/verify", data={"csrf_token": csrf}).text


# --- API -------------------------------------------------------------------------------------------
def test_events_api_pages_by_cursor_newest_first_each_event_once(client: TestClient, redis_url: str) -> None:
    """Walking next_cursor with limit 3 visits every event once, newest first, also across equal timestamps."""
    seeded = seed(redis_url, [("deployment.ready", "queued", None)] * 5, step_ms=1)
    seeded += seed(redis_url, [("deployment.ready", "queued", None)] * 4, step_ms=0)  # same millisecond
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/events", params=params, headers=BEARER).json()
        assert len(page["items"]) <= 3
        seen += [i["event_id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(s.event_id for s in seeded)
    assert len(seen) == len(set(seen))
    received = [i for i in seen]
    order = {s.event_id: (s.received_ms, s.event_id) for s in seeded}
    assert [order[i] for i in received] == sorted((order[i] for i in received), reverse=True)


def test_events_api_stays_stable_while_new_events_arrive(client: TestClient, redis_url: str) -> None:
    """Events received after the first page do not shift the second page."""
    old = seed(redis_url, [("deployment.ready", "queued", None)] * 4, start_ms=1_700_000_000_000)
    first = client.get("/api/v1/events", params={"limit": "2"}, headers=BEARER).json()
    seed(redis_url, [("deployment.ready", "queued", None)] * 3, start_ms=1_700_000_010_000)
    second = client.get("/api/v1/events", params={"limit": "2", "cursor": first["next_cursor"]},
                        headers=BEARER).json()
    assert [i["event_id"] for i in first["items"] + second["items"]] == [s.event_id for s in reversed(old)]


def test_events_api_filters_by_state_type_time_and_id_prefix(client: TestClient, redis_url: str) -> None:
    """state, type, since/until (Unix seconds and ISO 8601) and q each narrow the list as documented."""
    seeded = seed(redis_url, [("deployment.ready", "succeeded", None), ("deployment.failed", "dead_lettered", None),
                              ("deployment.ready", "dead_lettered", None), ("deployment.created", "queued", None)],
                  start_ms=1_700_000_000_000, step_ms=60_000)

    def ids(**params: str) -> list[str]:
        answer = client.get("/api/v1/events", params=params, headers=BEARER)
        assert answer.status_code == 200, answer.text
        return [i["event_id"] for i in answer.json()["items"]]

    s = [x.event_id for x in seeded]
    assert ids(state="dead_lettered") == [s[2], s[1]]
    assert ids(type="deployment.ready") == [s[2], s[0]]
    assert ids(state="dead_lettered", type="deployment.ready") == [s[2]]
    assert ids(since="1700000060", until="1700000120") == [s[2], s[1]]
    assert ids(since="2023-11-14T22:14:20Z") == [s[3], s[2], s[1]]
    assert ids(q=s[1][:12]) == [s[1]]
    assert ids(q=s[1][:12], state="succeeded") == []


@pytest.mark.parametrize("params", [{"state": "lost"}, {"type": "Not A Type"}, {"since": "yesterday"},
                                    {"cursor": "!!"}, {"limit": "0"}, {"since": "1700000100", "until": "1700000000"}])
def test_events_api_rejects_filters_that_mean_nothing(client: TestClient, params: dict[str, str]) -> None:
    """A bad filter, cursor or limit: 400 problem naming what is wrong."""
    answer = client.get("/api/v1/events", params=params, headers=BEARER)
    assert answer.status_code == 400
    assert answer.json()["code"] in {"invalid_filter", "invalid_cursor"}


def test_replay_api_dry_run_counts_and_replays_nothing(client: TestClient, redis_url: str) -> None:
    """dry_run true answers the matching count and changes nothing; false replays exactly those."""
    seeded = seed(redis_url, [("deployment.failed", "dead_lettered", None)] * 3
                  + [("deployment.ready", "dead_lettered", None)])
    body = {"type": "deployment.failed", "dry_run": True}
    assert client.post("/api/v1/replay", json=body, headers=BEARER).json() == {
        "matched": 3, "count": 3, "replayed": 0, "dry_run": True}
    nested = {"filter": {"state": "dead_lettered", "type": "deployment.failed"}, "dry_run": True}
    assert client.post("/api/v1/replay", json=nested, headers=BEARER).json()["count"] == 3
    assert all(state_of(client, s.event_id) == "dead_lettered" for s in seeded)
    assert client.post("/api/v1/replay", json={**body, "dry_run": False}, headers=BEARER).json() == {
        "matched": 3, "count": 3, "replayed": 3, "dry_run": False}
    assert [state_of(client, s.event_id) for s in seeded] == ["queued"] * 3 + ["dead_lettered"]


def test_replay_api_queues_one_dead_letter_under_a_new_generation(client: TestClient, redis_url: str) -> None:
    """POST /api/v1/events/{id}/replay: generation 1, state queued, history says replayed; again: 409."""
    (dead,) = seed(redis_url, [("deployment.failed", "dead_lettered", None)])
    answer = client.post(f"/api/v1/events/{dead.event_id}/replay", headers=BEARER)
    assert answer.json() == {"event_id": dead.event_id, "status": "queued", "generation": 1}
    detail = client.get(f"/api/v1/events/{dead.event_id}", headers=BEARER).json()
    assert detail["history"][-1] == {**detail["history"][-1], "state": "queued", "generation": 1, "error": "replayed"}
    again = client.post(f"/api/v1/events/{dead.event_id}/replay", headers=BEARER)
    assert again.status_code == 409 and again.json()["code"] == "not_dead_lettered"
    assert client.post("/api/v1/events/evt_missing/replay", headers=BEARER).status_code == 404


def test_stats_api_counts_states_queue_and_deliveries_per_minute(client: TestClient, redis_url: str) -> None:
    """Stats: events per state, queue depth, dead letters, audit head and this minute's events by state."""
    seed(redis_url, [("deployment.ready", "queued", None), ("deployment.failed", "dead_lettered", None),
                     ("other.kind", "ignored", None)], step_ms=0)
    stats = client.get("/api/v1/stats", headers=BEARER).json()
    assert stats["states"]["queued"] == 1 and stats["states"]["dead_lettered"] == 1 and stats["states"]["ignored"] == 1
    assert stats["queue_depth"] == 2  # no worker runs here: both queued deliveries' jobs are still waiting
    assert stats["dead_letters"] == 1
    assert stats["audit_head"]["seq"] == 3
    last = stats["deliveries_last_hour"][-1]
    assert (last.get("queued"), last.get("dead_lettered"), last.get("ignored")) == (1, 1, 1)


def test_audit_verify_api_reports_ok_then_the_removed_entry(client: TestClient, redis_url: str) -> None:
    """POST /api/v1/audit/verify: ok over an intact log; once the first entry is removed, not ok."""
    seed(redis_url, [("deployment.ready", "succeeded", None)] * 2)
    good = client.post("/api/v1/audit/verify", headers=BEARER).json()
    assert good["ok"] is True and good["checked"] == 2
    r = sync_redis.Redis.from_url(redis_url)
    first = r.xrange(keys.AUDIT_STREAM, count=1)
    assert isinstance(first, list)
    r.xdel(keys.AUDIT_STREAM, first[0][0])
    bad = client.post("/api/v1/audit/verify", headers=BEARER).json()
    assert bad["ok"] is False and bad["problem"]["seq"] == 2


def test_no_secret_api_key_or_console_token_in_any_answer(client: TestClient, redis_url: str) -> None:
    """Neither pages nor the API ever contain the webhook secrets, the API key or the console token."""
    seeded = seed(redis_url, [("deployment.ready", "succeeded", None), ("deployment.failed", "dead_lettered", None)])
    bodies = [client.get("/login").text, client.post("/login", data={"token": "x"}).text]
    csrf = login(client)
    bodies += [client.get(p).text for p in PAGES]
    bodies += [client.get(f"/events/{s.event_id}").text for s in seeded]
    bodies += [client.post("/audit/verify", data={"csrf_token": csrf}).text]
    bodies += [client.request(m, p.replace("evt_x", seeded[0].event_id), headers=BEARER).text for m, p in API]
    for body in bodies:
        for secret in (SECRET, OLD_SECRET, API_KEY, TOKEN):
            assert secret not in body


def test_corpus_page_shows_each_collection_with_model_revision_and_documents(client: TestClient,
                                                                            redis_url: str) -> None:
    """A loaded collection is listed with its model, no revision yet, and its document count."""

    async def load() -> None:
        redis = Redis.from_url(redis_url)
        lines = ['{"id": "d1", "text": "one"}', '{"id": "d2", "text": "two <b>x</b>"}']
        await load_corpus(redis, lines, collection="kb-docs", model="bge-m3")
        await redis.aclose()

    asyncio.run(load())
    login(client)
    html = client.get("/corpus").text
    row = html[html.index("kb-docs"):]
    assert "bge-m3" in row[:300] and "none yet" in row[:300] and "<td>2</td>" in row[:300]
