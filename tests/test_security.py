"""Security properties: nothing secret in logs or answers, constant-time comparison, a non-root image, and a
loud warning when Redis persistence is off (then a Redis crash loses events already acknowledged with 2xx).
"""

from __future__ import annotations

import ast
import contextlib
import hmac
import inspect
import json
import re
import shlex
import subprocess
import textwrap
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as sync_redis
import schemathesis
import structlog

from runinfra_webhooks.service.core import signature
from runinfra_webhooks.service.core.signature import Outcome, sign, verify
from runinfra_webhooks.service.receiver.app import create_app
from runinfra_webhooks.service.storage import keys
from tests.builders import OLD_SECRET, SECRET, example_event, post_delivery, signed_delivery
from tests.conftest import make_settings
from tests.leakwatch import LeakWatch
from tests.processes import receiver_process, stack_env, wait_until, worker_process
from tests.redis_server import Db, RedisServer, free_port
from tests.servers import serve_in_thread
from tests.stubserver import STUB_API_KEY, StubServer

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_764_086_400
SECRETS = (SECRET.encode(), OLD_SECRET.encode())
V1 = re.compile(r"v1=([^,]*)")


def _v1_of(header: str) -> str:
    """The first v1 signature of a ``runinfra-signature`` header."""
    match = V1.search(header)
    assert match is not None, header
    return match.group(1)


# --- what must never leak ------------------------------------------------------------------------------
@dataclass
class Needles:
    """The secrets, the gateway key, and every signature the server computed or received."""

    strings: set[str] = field(default_factory=lambda: {SECRET, OLD_SECRET, STUB_API_KEY})

    def add_delivery(self, body: bytes, header: str | None) -> None:
        """Every v1 the receiver computes for this delivery (one per configured secret), and every v1 sent."""
        if not header:
            return
        stamps = re.findall(r"(?:^|,)\s*t=([^,]*)", header)
        for t in stamps:
            if re.fullmatch(r"0|[1-9][0-9]{0,11}", t.strip()):
                for secret in (SECRET, OLD_SECRET):
                    self.strings.add(_v1_of(sign(body, secret, int(t))))
        self.strings.update(v.strip() for v in V1.findall(header) if len(v.strip()) >= 16)

    def found_in(self, text: str) -> list[str]:
        return sorted(f"{n[:10]}..." for n in self.strings if n in text)


@dataclass
class Sender:
    url: str
    needles: Needles
    answers: list[httpx.Response] = field(default_factory=list)

    def post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        self.needles.add_delivery(body, headers.get("runinfra-signature"))
        resp = post_delivery(self.url, body, headers)
        self.answers.append(resp)
        return resp

    def a_bit_of_everything(self) -> dict[str, str]:
        """Valid, rotated-secret, duplicate, wrong-secret, tampered, stale, malformed, unsigned, invalid body.

        Returns the ids of the accepted events that call the gateway, by what they should end as.
        """
        now = int(time.time())
        speech = example_event("transcription.completed")
        assert self.post(*signed_delivery(speech)).status_code == 202
        assert self.post(*signed_delivery(speech)).json()["status"] == "duplicate"
        rotated = example_event("transcription.completed")
        assert self.post(*signed_delivery(rotated, secret=OLD_SECRET)).status_code == 202
        assert self.post(*signed_delivery(example_event("deployment.created"))).status_code == 202

        body, headers = signed_delivery(example_event("deployment.ready"))
        wrong = {**headers, "runinfra-signature": sign(body, "whsec_wrong_secret_000", now)}
        tampered = {**headers}
        stale = {**headers, "runinfra-signature": sign(body, SECRET, now - 3600)}
        future = {**headers, "runinfra-signature": sign(body, SECRET, now + 3600)}
        many = {**headers, "runinfra-signature": f"t={now}," + ",".join(f"v1={'ab' * 32}" for _ in range(8))}
        too_many = {**headers, "runinfra-signature": f"t={now}," + ",".join(f"v1={'cd' * 32}" for _ in range(9))}
        no_v1 = {**headers, "runinfra-signature": f"t={now},v0={'ef' * 32}"}
        expected = {"wrong": (wrong, "signature_mismatch"), "tampered": (tampered, "signature_mismatch"),
                    "stale": (stale, "timestamp_too_old"), "future": (future, "timestamp_too_new"),
                    "many": (many, "signature_mismatch"), "too_many": (too_many, "malformed_signature"),
                    "no_v1": (no_v1, "no_v1_signature")}
        for name, (h, code) in expected.items():
            sent = body + b" " if name == "tampered" else body
            resp = self.post(sent, h)
            assert (resp.status_code, resp.json()["code"]) == (401, code), name
        unsigned = self.post(body, {"content-type": "application/json"})
        assert unsigned.json()["code"] == "missing_signature"

        for bad_body, code in [(b"{not json", "invalid_json"), (b'{"id": 1}', "invalid_event"),
                               (b"\xff" * 10, "invalid_json")]:
            resp = self.post(*signed_delivery(body=bad_body))
            assert (resp.status_code, resp.json()["code"]) == (400, code)
        assert self.post(*signed_delivery({"id": "evt_unknown_type_1", "type": "billing.paid", "created": now,
                                           "data": {}})).json()["status"] == "ignored"

        surrogate = example_event("transcription.completed")
        surrogate["data"]["text"] = "caf\udce9 unpaired"  # legal JSON escape, not encodable as UTF-8
        assert self.post(*signed_delivery(surrogate)).json()["status"] == "dead_lettered"
        return {speech["id"]: "succeeded", rotated["id"]: "succeeded", surrogate["id"]: "dead_lettered"}

    def one_more(self, type_: str = "transcription.completed") -> str:
        event = example_event(type_)
        assert self.post(*signed_delivery(event)).status_code == 202
        return str(event["id"])


def assert_answers_leak_nothing(answers: list[httpx.Response], needles: Needles) -> None:
    assert answers
    for resp in answers:
        text = resp.text + json.dumps(dict(resp.headers))
        assert not needles.found_in(text), (resp.status_code, needles.found_in(text))
        if resp.status_code >= 400:
            assert resp.headers["content-type"] == "application/problem+json"


def test_real_processes_log_no_secret_key_or_signature(
    redis_url: str, db: Db, stub: StubServer, tmp_path: Path
) -> None:
    """Receiver and worker processes at debug level, through every kind of delivery and gateway call.

    Their complete output (and every answer body) must not contain either webhook secret, the gateway API
    key, or any v1 signature the receiver computed or was sent.
    """
    env = stack_env(redis_url, stub.base_url, tmp_path / "artifacts", RUNINFRA_LOG_LEVEL="debug",
                    RUNINFRA_CHAT_MODEL="llama-3.1-8b", RUNINFRA_MAX_ATTEMPTS="2")
    needles = Needles()
    receiver_log, worker_log = tmp_path / "receiver.out", tmp_path / "worker.out"  # not *.log: scanned here

    def state(event_id: str) -> str:
        return (db.hget(keys.event(event_id), "state") or b"").decode()

    def settle(outcomes: dict[str, str]) -> None:
        def settled() -> bool:
            return all(state(i) == want for i, want in outcomes.items())

        with contextlib.suppress(AssertionError):
            wait_until(settled, timeout=45, what="events to settle")
        assert settled(), {i: state(i) for i in outcomes}

    with receiver_process(env, receiver_log) as url, worker_process(env, worker_log):
        sender = Sender(url, needles)
        settle(sender.a_bit_of_everything())
        stub.set_faults(route="/v1/audio/speech", script=[401])  # the gateway refuses the key once
        settle({sender.one_more(): "dead_lettered"})
        stub.set_faults(route="/v1/chat/completions", script=[503, 429])  # transient, retried inline
        settle({sender.one_more(): "succeeded"})
        assert any(c["authorization_ok"] for c in stub.calls()), "the gateway was never called with the key"
    logs = receiver_log.read_text(errors="replace") + worker_log.read_text(errors="replace")
    logged = {json.loads(line).get("event") for line in logs.splitlines() if line.startswith("{")}
    for event in ("webhook.received", "webhook.rejected", "redis.persistence", "gateway.call",
                  "event.dead_lettered", "event.succeeded"):
        assert event in logged, f"{event} was never logged: the scan would prove nothing"
    assert not needles.found_in(logs), needles.found_in(logs)
    assert "Bearer" not in logs and "authorization" not in logs.lower()
    assert_answers_leak_nothing(sender.answers, needles)


def test_in_process_structlog_and_problem_bodies_carry_no_secret(receiver_url: str) -> None:
    """The same deliveries against the in-process app, with structlog captured event by event."""
    needles = Needles()
    sender = Sender(receiver_url, needles)
    with structlog.testing.capture_logs() as logs:
        sender.a_bit_of_everything()
    assert {e["event"] for e in logs} >= {"webhook.received", "webhook.rejected"}
    text = json.dumps(logs, default=repr)
    assert not needles.found_in(text), needles.found_in(text)
    assert not any("signature" in str(k).lower() and k != "secret_index" for e in logs for k in e)
    assert_answers_leak_nothing(sender.answers, needles)


def test_the_suite_wide_leak_watch_catches_what_it_should(leak_watch: LeakWatch, tmp_path: Path) -> None:
    """The conftest hook that scans every log of the whole suite does fire (then forgets, so this passes)."""
    leak_watch.take()
    body = b'{"id":"evt_watch"}'
    header = sign(body, SECRET, NOW)
    structlog.get_logger("test").info("oops", header=header)
    (tmp_path / "proc.log").write_text(f"starting with key {STUB_API_KEY}\n")
    leak_watch.scan_files(tmp_path)
    import logging

    logging.getLogger("test.leak").error("secret is %s", OLD_SECRET)
    leaks = leak_watch.take()
    assert any("computed signature" in s and "oops" in s for s in leaks), leaks
    assert any("proc.log" in s for s in leaks), leaks
    assert any("logging test.leak" in s for s in leaks), leaks
    structlog.get_logger("test").info("fine", header_length=len(header), outcome="ok")
    assert leak_watch.take() == []


# --- constant-time comparison ----------------------------------------------------------------------
@pytest.fixture
def compare_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    return calls


def _expected(body: bytes, t: int) -> list[bytes]:
    return [_v1_of(sign(body, s, t)).encode() for s in SECRETS]


@pytest.mark.parametrize("case", ["first-byte-mismatch", "last-byte-mismatch", "match-first", "match-last",
                                  "wrong-length", "non-hex", "stale-but-matching"])
def test_every_v1_is_compared_to_every_secret_with_compare_digest(
    compare_calls: list[tuple[bytes, bytes]], case: str
) -> None:
    """len(v1) x len(secrets) calls to hmac.compare_digest, whatever matches or where a mismatch starts.

    No early exit on a match, no == on signature bytes: timing does not tell which candidate or secret
    matched, nor how many leading characters of a forged signature were right.
    """
    body = b'{"id":"evt_ct"}'
    good = _expected(body, NOW)
    first = (b"0" if good[0][:1] != b"0" else b"1") + good[0][1:]
    last = good[0][:-1] + (b"0" if good[0][-1:] != b"0" else b"1")
    table: dict[str, list[bytes | str]] = {
        "first-byte-mismatch": [first, first, first],
        "last-byte-mismatch": [last, last, last],
        "match-first": [good[0], first, last],
        "match-last": [first, last, good[1]],
        "wrong-length": [good[0][:-2], good[0] + b"00", b""],
        "non-hex": ["\u00e9" * 32, "ZZ" * 32, "\ud800"],
        "stale-but-matching": [first, good[0], last],
    }
    candidates = table[case]
    header = f"t={NOW}," + ",".join(
        "v1=" + (c.decode() if isinstance(c, bytes) else c) for c in candidates
    )
    now = NOW + 10_000 if case == "stale-but-matching" else NOW
    result = verify(header, body, SECRETS, 300, now)
    sent = [c if isinstance(c, bytes) else c.encode("utf-8", "surrogatepass") for c in candidates]
    assert sorted(compare_calls) == sorted(product(sent, good)), "one compare_digest per (v1, secret) pair"
    matched = {"match-first": 0, "match-last": 1, "stale-but-matching": 0}.get(case)
    assert result.secret_index == matched
    assert result.outcome == {None: Outcome.SIGNATURE_MISMATCH, 0: Outcome.OK, 1: Outcome.OK}[matched] or (
        case == "stale-but-matching" and result.outcome == Outcome.TIMESTAMP_TOO_OLD)


def test_no_signature_is_compared_with_equality_operators() -> None:
    """Static check of verify(): the only comparison of candidate and expected bytes is compare_digest."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(signature.verify)))
    secret_names = {"candidate", "candidates", "expected"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                if isinstance(operand, ast.Call) and ast.unparse(operand.func) == "len":
                    continue  # how many signatures were sent is not secret
                names = {n.id for n in ast.walk(operand) if isinstance(n, ast.Name)}
                assert not names & secret_names, ast.unparse(node)
    calls = [ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert "hmac.compare_digest" in calls


def test_the_live_receiver_compares_in_constant_time(
    receiver_url: str, compare_calls: list[tuple[bytes, bytes]]
) -> None:
    """Over HTTP: 3 v1 x 2 configured secrets = 6 compare_digest calls, for a forged and a valid delivery."""
    body = json.dumps(example_event("deployment.deleted")).encode()
    t = int(time.time())
    good = _expected(body, t)
    forged = b"f" + good[0][1:] if good[0][:1] != b"f" else b"e" + good[0][1:]
    for v1s, status in [([forged, forged, forged], 401), ([forged, good[1], forged], 202)]:
        compare_calls.clear()
        header = f"t={t}," + ",".join(f"v1={v.decode()}" for v in v1s)
        resp = post_delivery(receiver_url, body, {"runinfra-signature": header}, timeout=10)
        assert resp.status_code == status, resp.text
        assert sorted(compare_calls) == sorted(product(v1s, good))


# --- the container ---------------------------------------------------------------------------------
def _dockerfile_instructions() -> list[tuple[str, str]]:
    dockerfile = ROOT / "Dockerfile"
    if not dockerfile.exists():
        pytest.fail("no Dockerfile at the repository root")
    joined = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _exec_form(value: str) -> list[str]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return ["/bin/sh", "-c", value]
    assert isinstance(parsed, list) and all(isinstance(p, str) for p in parsed)
    return parsed


def test_the_image_runs_as_a_non_root_user() -> None:
    """The final stage's last USER is neither root nor uid 0 (by name or number, with or without a group)."""
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    final = instructions[last_from:]
    users = [value for word, value in final if word == "USER"]
    assert users, "the final stage has no USER: the container would run as root"
    user, _, group = users[-1].partition(":")
    assert user not in {"root", "0", ""} and not re.fullmatch(r"0+", user), users[-1]
    assert group not in {"root"} and not re.fullmatch(r"0+", group or "1"), users[-1]
    if not user.isdigit():  # a named user must be created in the image
        assert any(word == "RUN" and re.search(rf"(useradd|adduser)\b.*\b{re.escape(user)}\b", value)
                   for word, value in final), f"user {user} is never created"
    # Nothing after the last USER switches back.
    after = final[max(i for i, (word, _) in enumerate(final) if word == "USER"):]
    assert not any(word == "RUN" and re.search(r"\b(su|sudo|gosu|su-exec)\b", value) for word, value in after)


def test_the_image_starts_the_receiver_via_the_console_script() -> None:
    """The image's final stage starts `runinfra-webhooks serve`, the console script, without shell quoting."""
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    final = instructions[last_from:]
    entrypoint = [_exec_form(v) for w, v in final if w == "ENTRYPOINT"]
    cmd = [_exec_form(v) for w, v in final if w == "CMD"]
    argv = (entrypoint[-1] if entrypoint else []) + (cmd[-1] if cmd else [])
    if argv[:2] == ["/bin/sh", "-c"]:
        argv = shlex.split(argv[2])
    assert argv[:2] == ["runinfra-webhooks", "serve"], argv
    assert all("\"" not in a for a in argv)


def test_the_image_bakes_in_no_secret() -> None:
    """Secrets come from the runtime environment, never from ENV/ARG in the image (they would be in layers)."""
    for word, value in _dockerfile_instructions():
        if word in {"ENV", "ARG"}:
            assert not re.search(r"RUNINFRA_(WEBHOOK_SECRET|API_KEY)|whsec_|sk-", value), (word, value)


# --- Redis persistence -----------------------------------------------------------------------------
SPEC = schemathesis.openapi.from_path(ROOT / "openapi.yaml")


def _readyz(url: str) -> dict[str, Any]:
    resp = httpx.get(url + "/readyz", timeout=10)
    assert resp.status_code == 200, resp.text
    SPEC["/readyz"]["GET"].validate_response(resp)  # the body conforms to openapi.yaml, nulls included
    body: dict[str, Any] = resp.json()
    return body


@contextlib.contextmanager
def _app_on(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, list[MutableMapping[str, Any]]]]:
    """The receiver in-process, with the log events of its start-up captured."""
    with structlog.testing.capture_logs() as logs, serve_in_thread(create_app(make_settings(redis_url, tmp_path))) \
            as url:
        yield url, logs


def test_persistence_off_warns_at_start_up_and_on_readyz(redis_url: str, tmp_path: Path) -> None:
    """The suite's redis-server runs without AOF and RDB: a start-up warning and a /readyz warning."""
    with _app_on(redis_url, tmp_path) as (url, logs):
        ready = _readyz(url)
    [startup] = [e for e in logs if e["event"] == "redis.persistence"]
    assert startup["log_level"] == "warning"
    assert (startup["aof"], startup["rdb"]) == (False, False)
    assert "loses acknowledged events" in startup["warning"]
    assert ready["persistence"] == {"aof": False, "rdb": False, "appendfsync": startup["appendfsync"],
                                    "warning": startup["warning"]}


def test_rdb_without_aof_still_warns(own_redis: RedisServer, tmp_path: Path) -> None:
    """Snapshots alone lose everything acknowledged since the last one when Redis crashes."""
    own_redis.client().config_set("save", "900 1")
    with _app_on(own_redis.url, tmp_path) as (url, logs):
        ready = _readyz(url)
    [startup] = [e for e in logs if e["event"] == "redis.persistence"]
    assert (startup["aof"], startup["rdb"]) == (False, True)
    assert "AOF is off" in startup["warning"] and ready["persistence"]["warning"] == startup["warning"]


def test_aof_on_gives_no_persistence_warning(tmp_path: Path) -> None:
    """With AOF on, start-up logs no persistence warning and /readyz reports none."""
    (tmp_path / "aof").mkdir()
    with RedisServer(tmp_path / "aof", appendonly=True) as server:
        with _app_on(server.url, tmp_path) as (url, logs):
            ready = _readyz(url)
    assert not [e for e in logs if e["event"] == "redis.persistence"]
    assert ready["persistence"] == {"aof": True, "rdb": False, "appendfsync": "always", "warning": None}


def test_config_refused_warns_that_persistence_is_unknown(tmp_path: Path) -> None:
    """Managed Redis often disables CONFIG: then the receiver cannot tell, and says so."""
    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path),
            "--rename-command", "CONFIG", ""]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = sync_redis.Redis(port=port)
        wait_until(lambda: _pings(client), timeout=10, what="redis-server without CONFIG")
        with _app_on(f"redis://127.0.0.1:{port}/0", tmp_path) as (url, logs):
            ready = _readyz(url)
    finally:
        proc.kill()
        proc.wait()
    [startup] = [e for e in logs if e["event"] == "redis.persistence"]
    assert "unknown" in startup["warning"]
    assert ready["persistence"] == {"aof": None, "rdb": None, "appendfsync": None, "warning": startup["warning"]}


def _pings(client: sync_redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except sync_redis.RedisError:
        return False
