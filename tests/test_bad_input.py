"""Hostile and broken deliveries over real HTTP: each gets its defined answer, never a 5xx or a stuck slot.

Signed bodies reach the JSON and envelope checks (400 ``invalid_json`` / ``invalid_event``); unsigned
ones stop at the signature (401); oversized ones at the size limit (413, also chunked, without reading the
rest); slow ones at the body time limit (408). After each, the receiver still answers promptly.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from runinfra_webhooks.service.receiver.app import create_app
from runinfra_webhooks.service.storage import keys
from tests.builders import WEBHOOK_PATH, example_event, post_delivery, signed_delivery
from tests.conftest import make_settings
from tests.processes import Proc, stack_env, started_receiver
from tests.raw_http import host_port, read_response
from tests.redis_server import Db, RedisServer
from tests.servers import serve_in_thread

BODY_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def live(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One receiver for the module, with a short body time limit so slow clients are cut off quickly."""
    settings = make_settings(redis_server.url, tmp_path_factory.mktemp("bad_input"),
                             RUNINFRA_BODY_TIMEOUT=str(BODY_TIMEOUT))
    with serve_in_thread(create_app(settings)) as url:
        yield url


def post_signed(url: str, body: bytes) -> httpx.Response:
    return post_delivery(url, *signed_delivery(body=body))


def assert_problem(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = resp.json()
    assert (problem["status"], problem["code"]) == (status, code)
    assert problem["request_id"] == resp.headers["x-request-id"]
    return problem


def assert_healthy(url: str) -> None:
    """The receiver still serves both a liveness probe and a real delivery, quickly."""
    started = time.monotonic()
    assert httpx.get(url + "/healthz", timeout=5).status_code == 200
    event = example_event("deployment.deleted")
    resp = post_delivery(url, *signed_delivery(event))
    assert resp.status_code == 202 and resp.json()["event_id"] == event["id"], resp.text
    assert time.monotonic() - started < 3


def envelope_bytes(data_json: bytes = b"{}", *, created: bytes = b"1764086400", id_: bytes = b'"evt_bad"',
                   type_: bytes = b'"deployment.deleted"') -> bytes:
    return b'{"id":%s,"type":%s,"created":%s,"data":%s}' % (id_, type_, created, data_json)


# --- deeply nested JSON ----------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="array-100k"),
    pytest.param(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, id="object-50k"),
    pytest.param(envelope_bytes(b'{"x":' + b"[" * 200_000 + b"]" * 200_000 + b"}"), id="in-data-200k"),
    pytest.param(b"[" * 500_000, id="unterminated-500k"),
])
def test_deeply_nested_json_is_invalid_json(live: str, body: bytes) -> None:
    """Signed JSON nested far past the parser's limit is 400 invalid_json, and the receiver stays healthy."""
    problem = assert_problem(post_signed(live, body), 400, "invalid_json")
    assert "recursion" in problem["detail"] or "Expecting" in problem["detail"]
    assert_healthy(live)


def test_nesting_around_the_recursion_limit_is_either_accepted_or_invalid_json(live: str) -> None:
    """Whatever depth the parser's stack allows, the answer is 202 (ignored fields) or 400, never 500."""
    answers = set()
    for depth in range(850, 1100, 10):
        nested = b"[" * depth + b"]" * depth
        body = envelope_bytes(b'{"deployment_id":"d","pipeline_id":"p","deep":%s}' % nested,
                              id_=b'"evt_deep_%d_%d"' % (depth, time.time_ns()))
        resp = post_signed(live, body)
        if resp.status_code == 400:
            assert_problem(resp, 400, "invalid_json")
        else:
            assert resp.status_code == 202, resp.text
            assert resp.json()["status"] == "queued"
        answers.add(resp.status_code)
    assert 400 in answers  # the range does reach the limit
    assert_healthy(live)


def test_deeply_nested_unsigned_body_stops_at_the_signature(live: str) -> None:
    """An unsigned, deeply nested body is refused at the signature (401), before anything parses it."""
    resp = post_delivery(live, b"[" * 100_000, {"content-type": "application/json"})
    assert_problem(resp, 401, "missing_signature")


# --- huge numbers -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "code"), [
    pytest.param(envelope_bytes(created=b"1" + b"0" * 5000), "invalid_json", id="created-5000-digits"),
    pytest.param(envelope_bytes(b'{"n":%s}' % (b"9" * 100_000)), "invalid_json", id="data-100k-digits"),
    pytest.param(envelope_bytes(created=b"1e400"), "invalid_event", id="created-float-overflow"),
    pytest.param(envelope_bytes(created=b"-1" + b"0" * 40), "invalid_event", id="created-huge-negative"),
    pytest.param(envelope_bytes(created=b"1764086400.0"), "invalid_event", id="created-float"),
    pytest.param(envelope_bytes(created=b"1e3"), "invalid_event", id="created-exponent"),
    pytest.param(envelope_bytes(created=b"NaN"), "invalid_json", id="created-nan"),
    pytest.param(envelope_bytes(created=b"Infinity"), "invalid_json", id="created-infinity"),
    pytest.param(envelope_bytes(created=b"true"), "invalid_event", id="created-bool"),
])
def test_huge_and_non_integer_numbers_get_400(live: str, body: bytes, code: str) -> None:
    """Huge, fractional, exponent, NaN, Infinity or boolean numbers get their 400 code, never a 500."""
    assert_problem(post_signed(live, body), 400, code)


@pytest.mark.parametrize("data", [
    pytest.param(b'{"n":1e400,"m":-1e400}', id="float-overflow-in-data"),
    pytest.param(b'{"n":%s}' % (b"1" + b"0" * 4000), id="4000-digit-int-in-data"),
    pytest.param(b'{"n":0.%s1}' % (b"0" * 100_000), id="long-fraction"),
])
def test_big_numbers_in_ignored_data_fields_are_accepted(live: str, data: bytes) -> None:
    """Within the parser's limits, numbers in fields nobody reads are ignored, like any unknown field."""
    body = envelope_bytes(data[:-1] + b',"deployment_id":"d","pipeline_id":"p"}',
                          id_=b'"evt_num_%d"' % time.time_ns())
    resp = post_signed(live, body)
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "queued"


def test_a_huge_integral_created_is_refused_before_it_reaches_redis(live: str) -> None:
    """10**30 is an integer but no Unix time a signature can carry: 400 invalid_event, not queued."""
    event = example_event("deployment.deleted", created=10**30)
    assert_problem(post_delivery(live, *signed_delivery(event)), 400, "invalid_event")


# --- not UTF-8 --------------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    pytest.param(b"\xff\xfe" + envelope_bytes(), id="bom-utf16-prefix"),
    pytest.param(json.dumps(example_event("transcription.completed")).encode("utf-16"), id="utf-16"),
    pytest.param(json.dumps(example_event("transcription.completed")).encode("utf-32"), id="utf-32"),
    pytest.param(envelope_bytes(b'{"text":"caf\xe9"}'), id="latin-1-in-string"),
    pytest.param(envelope_bytes(b'{"text":"\xed\xa0\x80"}'), id="encoded-surrogate"),
    pytest.param(envelope_bytes(b'{"text":"\xc0\xaf"}'), id="overlong-slash"),
    pytest.param(envelope_bytes(b'{"text":"\xf4\x90\x80\x80"}'), id="beyond-u10ffff"),
    pytest.param(envelope_bytes(b'{"text":"\xe2\x82"}'), id="truncated-sequence"),
    pytest.param(b"\xef\xbb\xbf" + envelope_bytes(), id="utf-8-bom"),
    pytest.param(bytes(range(256)) * 16, id="all-bytes"),
])
def test_non_utf8_bodies_are_invalid_json(live: str, body: bytes) -> None:
    """A signed body that is not plain UTF-8 (bad sequences, surrogates, a BOM) is 400 invalid_json."""
    assert_problem(post_signed(live, body), 400, "invalid_json")


def test_escaped_lone_surrogates_are_valid_json_and_rejected_only_where_the_envelope_says(live: str) -> None:
    r"""\ud800 is legal JSON; in the id it breaks the id rule (400), in an ignored field it is ignored."""
    assert_problem(post_signed(live, envelope_bytes(id_=b'"evt_\\ud800"')), 400, "invalid_event")
    body = envelope_bytes(b'{"deployment_id":"d","pipeline_id":"p","note":"\\udcff"}',
                          id_=b'"evt_sur_%d"' % time.time_ns())
    assert post_signed(live, body).status_code == 202


@pytest.mark.parametrize("type_", ["transcription.completed", "deployment.ready", "deployment.failed"])
def test_a_lone_surrogate_in_a_typed_data_field_is_dead_lettered_at_once(live: str, db: Db, type_: str) -> None:
    r"""A data string like "caf\udce9" cannot be encoded for Redis or the gateway, on any attempt.

    It is answered 202 dead_lettered (invalid_payload, audited, replayable) instead of being queued and
    failing every retry of the job with UnicodeEncodeError until the attempts run out.
    """
    event = example_event(type_)
    field = {"transcription.completed": "text", "deployment.ready": "model", "deployment.failed": "modality"}[type_]
    event["data"][field] = "caf\udce9"
    resp = post_delivery(live, *signed_delivery(event))
    assert resp.status_code == 202
    assert resp.json() == {"status": "dead_lettered", "event_id": event["id"], "reason": "invalid_payload"}
    assert db.hget(keys.event(event["id"]), "state") == b"dead_lettered"


# --- NUL bytes --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "code"), [
    pytest.param(b"\x00" * 4096, "invalid_json", id="only-nuls"),
    pytest.param(envelope_bytes() + b"\x00", "invalid_json", id="trailing-nul"),
    pytest.param(b"\x00" + envelope_bytes(), "invalid_json", id="leading-nul"),
    pytest.param(envelope_bytes(id_=b'"evt_\x00"'), "invalid_json", id="raw-nul-in-string"),
    pytest.param(envelope_bytes(id_=b'"evt_\\u0000"'), "invalid_event", id="escaped-nul-in-id"),
    pytest.param(envelope_bytes(type_=b'"deployment.deleted\\u0000"'), "invalid_event", id="escaped-nul-in-type"),
    pytest.param(envelope_bytes(b'{"\\u0000":1}', id_=b'"\\u0000"'), "invalid_event", id="nul-key-and-id"),
])
def test_nul_bytes_get_400(live: str, body: bytes, code: str) -> None:
    """Raw NUL bytes make a body invalid JSON; escaped ones in the id, type or a key make it an invalid event."""
    assert_problem(post_signed(live, body), 400, code)


def test_an_escaped_nul_in_a_data_string_is_kept_byte_exact(live: str, db: Db) -> None:
    """JSON may carry U+0000 in strings; the event is accepted and the stored body is the signed bytes."""
    event_id = f"evt_nul_{time.time_ns()}"
    body = envelope_bytes(b'{"deployment_id":"d\\u0000","pipeline_id":"p"}', id_=json.dumps(event_id).encode())
    resp = post_signed(live, body)
    assert resp.status_code == 202, resp.text
    assert db.hget(keys.event(event_id), "body") == body


def test_nul_and_non_utf8_in_the_signature_header(live: str) -> None:
    """Header bytes HTTP forbids are refused by the HTTP layer (400); odd but legal ones are a 401."""
    host, port = host_port(live)
    body = envelope_bytes()
    for header, expected in [(b"t=1,v1=\x00ab", b"400"), (b"t=1\x00", b"400"), (b"t=1,v1=\xff\xfe", b"401"),
                             (b"t=\xd9\xa1,v1=ab", b"401"), (b"\x7f", b"400"), (b"t=1,v1=" + b"a" * 9000, b"401")]:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nrunInfra-Signature: %s\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (WEBHOOK_PATH.encode(), header, len(body), body))
            answer = read_response(s)
        assert answer.split(b" ", 2)[1] == expected, answer[:300]
        if expected == b"401":
            problem = json.loads(answer.split(b"\r\n\r\n", 1)[1])
            assert problem["code"] in {"malformed_signature", "signature_mismatch"}
    assert_healthy(live)


# --- oversized bodies -------------------------------------------------------------------------------
def test_a_declared_100_mb_body_is_refused_before_it_is_sent(live: str) -> None:
    """Content-Length over the limit: 413 at once; the client never has to send a byte of the body."""
    host, port = host_port(live)
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % (WEBHOOK_PATH.encode(), 100 * 2**20))
        answer = read_response(s)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["code"] == "body_too_large"
    assert_healthy(live)


@pytest.fixture
def receiver_proc(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, Proc]]:
    """The real console script, so its memory is its own to measure."""
    env = stack_env(redis_url, "http://127.0.0.1:9/v1", tmp_path / "artifacts")
    with started_receiver(env, tmp_path / "receiver.log") as running:
        yield running


def test_a_100_mb_chunked_body_is_refused_without_being_read(receiver_proc: tuple[str, Proc]) -> None:
    """Chunked, no Content-Length: 413 body_too_large after about the limit, not after 100 MB.

    The client streams 64 KiB chunks and stops at the first byte of an answer. The server must answer
    having received only a small part of the 100 MB, its peak memory must not grow by anything like 100 MB,
    and it must go on serving.
    """
    url, proc = receiver_proc
    host, port = host_port(url)
    hwm_before = _peak_rss_kib(proc.p.pid)
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"[" * (64 * 1024))
    total = 100 * 2**20
    sent = 0
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=30) as s:
        signature = signed_delivery(body=b"{}")[1]["runinfra-signature"]  # any header: size is decided first
        s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nrunInfra-signature: %s\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n" % (WEBHOOK_PATH.encode(), signature.encode()))
        answered = False
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < total:
                if select.select([s], [], [], 0)[0]:
                    answered = True
                    break
                s.sendall(chunk)
                sent += 64 * 1024
            s.sendall(b"0\r\n\r\n")
        answer = read_response(s)
        assert answered or answer, "no answer at all"
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["code"] == "body_too_large"
    assert sent < 40 * 2**20, f"the client had to send {sent} bytes before the answer"
    assert time.monotonic() - started < 20
    grown_mib = (_peak_rss_kib(proc.p.pid) - hwm_before) / 1024
    assert grown_mib < 30, f"receiver peak memory grew by {grown_mib:.0f} MiB"
    assert_healthy(url)


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_chunked_body_just_over_the_limit_is_413_and_at_the_limit_is_read(live: str) -> None:
    """The streaming check counts exactly: limit bytes pass to the signature check, limit + 1 do not."""
    limit = 1_048_576

    def chunks(n: int) -> Iterator[bytes]:
        left = n
        while left:
            take = min(left, 100_000)
            yield b" " * take
            left -= take

    over = httpx.post(live + WEBHOOK_PATH, content=chunks(limit + 1), timeout=30,
                      headers={"runinfra-signature": "t=1,v1=00"})
    assert_problem(over, 413, "body_too_large")
    at = httpx.post(live + WEBHOOK_PATH, content=chunks(limit), timeout=30, headers={"runinfra-signature": "t=1,v1=00"})
    assert_problem(at, 401, "signature_mismatch")


# --- slow clients -----------------------------------------------------------------------------------
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_one_byte_a_second_client_gets_408_while_others_are_served(live: str, chunked: bool) -> None:
    """A body trickling in at 1 byte/s is cut off at the body time limit with 408 request_timeout.

    Meanwhile other deliveries are answered promptly: the slow client holds no slot anyone waits for.
    """
    host, port = host_port(live)
    body = envelope_bytes()
    signature = signed_delivery(body=body)[1]["runinfra-signature"]
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(body)
    result: dict[str, Any] = {}

    def slow_client() -> None:
        with socket.create_connection((host, port), timeout=30) as s:
            s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"runinfra-signature: %s\r\n%s\r\n\r\n" % (WEBHOOK_PATH.encode(), signature.encode(), framing))
            started = time.monotonic()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for i in range(len(body)):
                    if select.select([s], [], [], 1.0)[0]:
                        break  # the server answered; wait a second between bytes otherwise
                    byte = body[i:i + 1]
                    s.sendall(b"1\r\n%s\r\n" % byte if chunked else byte)
            result["answer"] = read_response(s)
            result["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=slow_client)
    thread.start()
    time.sleep(0.3)
    served_meanwhile = 0
    try:
        while thread.is_alive() and served_meanwhile < 10:
            assert_healthy(live)  # each within 3 s, a delivery and a probe
            served_meanwhile += thread.is_alive()  # count only what finished while the slow body was pending
    finally:
        thread.join(BODY_TIMEOUT + 10)
    assert served_meanwhile >= 3, "the receiver did not serve others while a slow body was pending"
    answer: bytes = result["answer"]
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    problem = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert problem["code"] == "request_timeout" and problem["status"] == 408
    assert BODY_TIMEOUT - 0.5 <= result["elapsed"] <= BODY_TIMEOUT + 3
    assert_healthy(live)


def test_many_slow_clients_at_once_do_not_starve_the_receiver(live: str) -> None:
    """50 stalled bodies at once (a slowloris): a real delivery is still answered within a second."""
    host, port = host_port(live)
    stalled = []
    try:
        for _ in range(50):
            s = socket.create_connection((host, port), timeout=30)
            s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{" % WEBHOOK_PATH.encode())
            stalled.append(s)
        time.sleep(0.2)
        assert_healthy(live)
        answers = [read_response(s) for s in stalled]
    finally:
        for s in stalled:
            s.close()
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), {a[:12] for a in answers}
    assert_healthy(live)


def test_a_client_that_disconnects_mid_body_leaves_no_error_behind(live: str) -> None:
    """Hanging up half-way is the client's business: no unhandled-error log, no 5xx counted, still healthy."""
    host, port = host_port(live)
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            with socket.create_connection((host, port), timeout=10) as s:
                s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"id\"" % WEBHOOK_PATH.encode())
                time.sleep(0.1)
        time.sleep(0.3)
    assert not [e for e in logs if e["log_level"] in {"error", "critical"}], logs
    assert [e["event"] for e in logs].count("webhook.client_disconnected") == 3
    assert_healthy(live)
