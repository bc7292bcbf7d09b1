"""Hostile headers against a real `serve` process over raw sockets: size cap, read deadline, connection bound.

uvicorn with httptools alone buffers a header of any size and waits for it forever; the receiver's protocol
(service.receiver.edge) answers 431 past the cap, closes a connection whose headers do not arrive in time,
and refuses connections past the bound at once.
"""

from __future__ import annotations

import contextlib
import json
import resource
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.builders import signed_delivery
from tests.processes import Proc, stack_env, started_receiver
from tests.raw_http import host_port, read_response

PATH = "/webhooks/runinfra"
HEADER_TIMEOUT = 2.0
# GET /healthz every 50 ms for argv[2] seconds; prints "ready" once connected, then the latencies as JSON.
PROBE = """
import json, sys, time, httpx
with httpx.Client(base_url=sys.argv[1], timeout=5) as client:
    client.get("/healthz")
    print("ready", flush=True)
    latencies, until = [], time.monotonic() + float(sys.argv[2])
    while time.monotonic() < until:
        started = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        latencies.append(time.perf_counter() - started)
        time.sleep(0.05)
print(json.dumps(latencies))
"""
SLOW_CONNECTIONS = 2000


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


def _reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM starts again from the current RSS


def _read_all(s: socket.socket, timeout: float = 10) -> bytes:
    s.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        while chunk := s.recv(65536):
            data += chunk
    return data


def _problem_code(answer: bytes) -> str:
    code: str = json.loads(answer.split(b"\r\n\r\n", 1)[1])["code"]
    return code


@pytest.fixture
def receiver(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, Proc]]:
    """`serve` with a short header deadline, so slow connections are cut off within the test's patience."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 3 * SLOW_CONNECTIONS + 1000)  # client and server ends both live in this process tree
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    env = stack_env(redis_url, "http://127.0.0.1:9/v1", tmp_path / "artifacts",
                    RUNINFRA_HEADER_TIMEOUT=str(HEADER_TIMEOUT))
    try:
        with started_receiver(env, tmp_path / "receiver.log") as running:
            yield running
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_rejects_a_100_mb_header_after_reading_about_the_limit(receiver: tuple[str, Proc]) -> None:
    """A single 100 MB header: 431 headers_too_large, the receiver's peak memory grows by under 10 MB."""
    url, proc = receiver
    _reset_peak_rss(proc.p.pid)
    rss_before = _status_kib(proc.p.pid, "VmRSS")
    chunk = b"a" * 65536
    sent = 0
    with socket.create_connection(host_port(url), timeout=30) as s:
        s.sendall(b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Big: ")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < 100 * 2**20:
                s.sendall(chunk)
                sent += len(chunk)
        answer = _read_all(s)
    grown_mib = (_status_kib(proc.p.pid, "VmHWM") - rss_before) / 1024
    assert sent < 20 * 2**20, f"the client could send {sent} bytes of one header"
    assert grown_mib < 10, f"receiver peak memory grew by {grown_mib:.1f} MiB"
    if answer:  # the answer can be lost to the reset that closing an unread socket sends
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert httpx.get(url + "/healthz", timeout=5).status_code == 200


def test_answers_431_problem_for_headers_just_over_the_limit(receiver: tuple[str, Proc]) -> None:
    """Headers of 20 KiB (limit 16 KiB) sent whole: a 431 problem document with code headers_too_large."""
    url, _ = receiver
    with socket.create_connection(host_port(url), timeout=10) as s:
        s.sendall(b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_480 + b"\r\n\r\n")
        answer = _read_all(s)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"application/problem+json" in answer
    assert _problem_code(answer) == "headers_too_large"


def test_accepts_a_delivery_whose_headers_are_just_under_the_limit(receiver: tuple[str, Proc]) -> None:
    """A signed delivery with 15 KiB of headers is received as usual: the cap counts headers, not body."""
    url, _ = receiver
    body, headers = signed_delivery()
    headers["x-padding"] = "p" * 15_000
    resp = httpx.post(url + PATH, content=body, headers=headers, timeout=10)
    assert resp.status_code == 202, resp.text


def test_closes_2000_slow_header_connections_while_healthz_and_deliveries_stay_fast(
    receiver: tuple[str, Proc],
) -> None:
    """2,000 half-sent headers are closed within the deadline + 1 s; /healthz < 100 ms and a delivery works."""
    url, _ = receiver
    # The probe is its own process, so what it measures is the receiver, not this process's GIL while it
    # opens and watches 2,000 sockets.
    prober = subprocess.Popen([sys.executable, "-c", PROBE, url, str(HEADER_TIMEOUT + 3)], stdout=subprocess.PIPE,
                              text=True)
    assert prober.stdout is not None and prober.stdout.readline().strip() == "ready"
    selector = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    closed_after: list[float] = []
    try:
        for _ in range(SLOW_CONNECTIONS):
            s = socket.create_connection(host_port(url), timeout=5)
            s.sendall(b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Slow: a")
            s.setblocking(False)
            opened[s] = time.monotonic()
            selector.register(s, selectors.EVENT_READ)
        body, headers = signed_delivery()
        delivered = httpx.post(url + PATH, content=body, headers=headers, timeout=10)
        assert delivered.status_code == 202, delivered.text
        deadline = time.monotonic() + HEADER_TIMEOUT + 10
        while opened and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                ready_socket = key.fileobj
                assert isinstance(ready_socket, socket.socket)
                try:
                    data = ready_socket.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if not data:
                    closed_after.append(time.monotonic() - opened.pop(ready_socket))
                    selector.unregister(ready_socket)
                    ready_socket.close()
    finally:
        latencies = json.loads(prober.communicate(timeout=30)[0] or "[]")
        for s in opened:
            s.close()
        selector.close()
    assert not opened, f"{len(opened)} slow connections still open"
    assert max(closed_after) <= HEADER_TIMEOUT + 1, f"slowest close after {max(closed_after):.2f} s"
    assert min(closed_after) >= HEADER_TIMEOUT - 0.5, "closed before the deadline"
    assert latencies and max(latencies) < 0.1, f"/healthz took up to {max(latencies) * 1000:.0f} ms"


def test_refuses_connections_past_the_bound_quickly(redis_url: str, tmp_path: Path) -> None:
    """With RUNINFRA_MAX_CONNECTIONS=20 and 20 idle connections open, the next gets 503 at once."""
    env = stack_env(redis_url, "http://127.0.0.1:9/v1", tmp_path / "artifacts", RUNINFRA_MAX_CONNECTIONS="20",
                    RUNINFRA_HEADER_TIMEOUT="30")
    with started_receiver(env, tmp_path / "receiver.log") as (url, _):
        idle = [socket.create_connection(host_port(url), timeout=5) for _ in range(20)]
        try:
            time.sleep(0.3)  # the server has accepted them all
            started = time.monotonic()
            with socket.create_connection(host_port(url), timeout=5) as extra:
                answer = _read_all(extra, timeout=5)
            took = time.monotonic() - started
        finally:
            for s in idle:
                s.close()
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert _problem_code(answer) == "too_many_connections"
        assert took < 1.0
        time.sleep(0.3)  # the idle ones are gone: room again
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200


def test_closes_a_kept_alive_connection_whose_next_request_trickles_its_headers(
    receiver: tuple[str, Proc],
) -> None:
    """After a whole request, a second one that sends half a header is closed at the deadline (+1 s)."""
    url, _ = receiver
    with socket.create_connection(host_port(url), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = read_response(s)
        assert first.startswith(b"HTTP/1.1 200 "), first[:100]
        started = time.monotonic()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        answer = _read_all(s, timeout=HEADER_TIMEOUT + 5)
        took = time.monotonic() - started
    assert HEADER_TIMEOUT - 0.5 <= took <= HEADER_TIMEOUT + 1, f"closed after {took:.2f} s"
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert _problem_code(answer) == "header_timeout"
