"""`serve --workers N` from the outside: a real parent process, its worker processes and a real Redis.

Each worker builds its own receiver (Redis connections, registry, bounded protocol); the kernel spreads
connections over them; SIGTERM to the parent stops them all.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runinfra_webhooks.service.storage import keys
from tests.builders import example_event, signed_delivery
from tests.processes import stack_env, wait_until
from tests.redis_server import Db, free_port

PATH = "/webhooks/runinfra"
WORKERS = 2


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            return [int(p) for p in path.read_text().split()]
        return []

    def workers(self) -> list[int]:
        """The children that run a receiver (uvicorn's process manager also starts a resource tracker)."""
        return [pid for pid in self.children() if b"spawn_main" in _cmdline(pid)]


def _cmdline(pid: int) -> bytes:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    out.add(target[8:-1])
    return out


def _established_inodes(port: int, *, remote: bool = False) -> set[str]:
    """Inodes of established TCP connections whose local end (or, with ``remote``, far end) is on ``port``."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, far, state, inode = fields[1], fields[2], fields[3], fields[9]
        if state == "01" and int((far if remote else local).split(":")[1], 16) == port:
            out.add(inode)
    return out


@pytest.fixture
def served(redis_url: str, tmp_path: Path) -> Iterator[Served]:
    env = stack_env(redis_url, "http://127.0.0.1:9/v1", tmp_path / "artifacts")
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "runinfra_webhooks", "serve", "--port", str(port),
                                 "--workers", str(WORKERS)], env=env, stdout=out, stderr=subprocess.STDOUT)
    s = Served(proc, port, log)
    try:
        wait_until(lambda: _up(s.url) and len(s.workers()) == WORKERS, timeout=30, what="two receiver workers")
        yield s
    finally:
        children = s.children()  # before the parent goes: then they are no longer its children
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def test_every_worker_accepts_deliveries_into_redis(served: Served, db: Db, redis_url: str) -> None:
    """Deliveries over many connections are all queued, each of the two workers holds some of the
    connections, and each has connections of its own to Redis."""
    workers = served.workers()
    by_worker: dict[int, int] = dict.fromkeys(workers, 0)
    clients = []
    try:
        for _ in range(40):  # new connections, kept open so that each stays visible with its owner
            client = httpx.Client(base_url=served.url, timeout=10)
            clients.append(client)
            body, headers = signed_delivery(example_event("deployment.created"))
            assert client.post(PATH, content=body, headers=headers).status_code == 202
        established = _established_inodes(served.port)
        for pid in workers:
            by_worker[pid] = len(_socket_inodes(pid) & established)
    finally:
        for client in clients:
            client.close()
    assert sum(by_worker.values()) == 40, by_worker
    assert all(n > 0 for n in by_worker.values()), f"connections per worker pid: {by_worker}"
    assert db.xlen(keys.AUDIT_STREAM) == 40
    to_redis = _established_inodes(int(redis_url.rsplit(":", 1)[1].split("/")[0]), remote=True)
    redis_by_worker = {pid: len(_socket_inodes(pid) & to_redis) for pid in workers}
    assert all(n > 0 for n in redis_by_worker.values()), f"Redis connections per worker pid: {redis_by_worker}"


def test_sigterm_to_the_parent_stops_every_worker(served: Served) -> None:
    children = served.children()
    assert len(served.workers()) == WORKERS
    served.proc.terminate()
    assert served.proc.wait(timeout=30) == 0
    wait_until(lambda: not any(_alive(pid) for pid in children), timeout=15, what="the workers to exit")


def test_every_worker_answers_431_past_the_header_limit(served: Served) -> None:
    """The bounded protocol is each worker's: oversized headers are refused whichever worker accepts."""
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
            s.sendall(b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_480 + b"\r\n\r\n")
            s.settimeout(10)
            answer = b""
            with contextlib.suppress(ConnectionResetError, TimeoutError):
                while chunk := s.recv(65536):
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def test_refuses_zero_workers(redis_url: str, tmp_path: Path) -> None:
    env = stack_env(redis_url, "http://127.0.0.1:9/v1", tmp_path / "artifacts")
    res = subprocess.run([sys.executable, "-m", "runinfra_webhooks", "serve", "--workers", "0"], env=env,
                         capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 2
    assert "--workers" in res.stderr


def test_workers_stop_when_their_supervisor_is_killed(served: Served) -> None:
    """SIGKILL to the parent (no chance to stop its workers): each worker notices it was orphaned and stops
    itself within seconds, instead of serving on a port nobody manages."""
    workers = served.workers()
    served.proc.kill()
    served.proc.wait()
    wait_until(lambda: not any(_alive(pid) for pid in workers), timeout=15, what="orphaned workers to stop")
