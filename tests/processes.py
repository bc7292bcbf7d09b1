"""Real processes of the console script for end-to-end and fault tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from tests.builders import OLD_SECRET, SECRET
from tests.redis_server import free_port
from tests.stubserver import STUB_API_KEY


def stack_env(redis_url: str, stub_base_url: str, artifacts: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNINFRA_")}
    env.update(
        RUNINFRA_WEBHOOK_SECRET=f"{SECRET},{OLD_SECRET}",
        REDIS_URL=redis_url,
        RUNINFRA_BASE_URL=stub_base_url,
        RUNINFRA_API_KEY=STUB_API_KEY,
        RUNINFRA_TTS_MODEL="kokoro-82m",
        RUNINFRA_TTS_VOICE="af_heart",
        RUNINFRA_ARTIFACTS_DIR=str(artifacts),
        # Short clocks so crash recovery and retries happen within a test's patience.
        RUNINFRA_JOB_TIMEOUT="5",
        RUNINFRA_RETRY_BASE="0.05",
        RUNINFRA_RETRY_CAP="0.5",
        RUNINFRA_SWEEP_INTERVAL="1",
        RUNINFRA_STUCK_AFTER="2",
        RUNINFRA_WORKER_POLL_DELAY="0.02",
        RUNINFRA_BREAKER_COOLDOWN="2",
    )
    env.update(extra)
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """One run of the console script, its output captured; the exit code is the caller's to check."""
    return subprocess.run([sys.executable, "-m", "runinfra_webhooks", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


class Proc:
    """One console-script process with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("ab")
        self.p = subprocess.Popen([sys.executable, "-m", "runinfra_webhooks", *args], env=env, stdout=self._out,
                                  stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait()

    def terminate(self, timeout: float = 30) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._out.close()
        return self.p.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def worker_process(env: dict[str, str], log: Path) -> Iterator[Proc]:
    proc = Proc(["worker"], env, log)
    try:
        yield proc
    finally:
        proc.terminate()


@contextlib.contextmanager
def started_receiver(env: dict[str, str], log: Path) -> Iterator[tuple[str, Proc]]:
    """A `serve` process on a free port, once it answers /healthz: (base url, process)."""
    port = free_port()
    proc = Proc(["serve", "--port", str(port)], env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _up(url), timeout=20, what=f"receiver on {port}")
        yield url, proc
    finally:
        proc.terminate()


@contextlib.contextmanager
def receiver_process(env: dict[str, str], log: Path) -> Iterator[str]:
    with started_receiver(env, log) as (url, _):
        yield url


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(predicate: Callable[[], object], *, timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll until predicate() is truthy; return the seconds it took, fail the test past the timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start
