"""``runinfra-webhooks dev``: a redis-server with AOF, the gateway emulator, a worker and the receiver.

Everything runs as child processes of this one command (the same console script the real deployment
runs), on loopback, with a throw-away secret and API key unless the environment sets its own. SIGINT (Ctrl-C),
SIGTERM or SIGHUP (the terminal closing) stops all of them. While it runs, ``.runinfra-dev/dev.json`` tells
commands started in the same directory where its Redis is (see ``session.py``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from runinfra_webhooks.service.devtools.session import DevSession, remove_session, write_session

__all__ = ["run_dev"]

DEV_SECRET = "whsec_dev_local_only"  # noqa: S105 - a local-only default, printed for the user to sign with
DEV_API_KEY = "sk-dev-stub"


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], name: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"{name} exited with {proc.returncode}"
            raise RuntimeError(msg)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    msg = f"{name} did not listen on {port}"
    raise RuntimeError(msg)


class _Stop(Exception):
    """SIGTERM or SIGHUP: stop like Ctrl-C does."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def run_dev(*, port: int, stub_port: int, redis_url: str | None, workdir: Path = Path(".runinfra-dev"),
            console_port: int = 8001) -> int:
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    me = [sys.executable, "-m", "runinfra_webhooks"]
    env = dict(os.environ)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if redis_url is None:
            redis_bin = shutil.which("redis-server")
            if redis_bin is None:
                print("redis-server not found: pass --redis-url", file=sys.stderr)
                return 2
            redis_port = _free_port()
            (workdir / "redis").mkdir(parents=True, exist_ok=True)
            redis = subprocess.Popen(
                [redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--dir",
                 str((workdir / "redis").resolve()), "--appendonly", "yes", "--appendfsync", "always",
                 "--save", "", "--logfile", "redis.log"], start_new_session=True)
            procs.append(("redis", redis))
            _wait_port(redis_port, redis, "redis-server")
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
        env.update(REDIS_URL=redis_url)
        env.setdefault("RUNINFRA_WEBHOOK_SECRET", DEV_SECRET)
        env.setdefault("RUNINFRA_API_KEY", DEV_API_KEY)
        env.setdefault("RUNINFRA_BASE_URL", f"http://127.0.0.1:{stub_port}/v1")
        env.setdefault("RUNINFRA_TTS_MODEL", "kokoro-82m")
        if not env.get("RUNINFRA_TTS_REF_AUDIO"):
            env.setdefault("RUNINFRA_TTS_VOICE", "af_heart")

        stub = subprocess.Popen([*me, "gateway-stub", "--port", str(stub_port), "--api-key", env["RUNINFRA_API_KEY"]],
                                env=env, start_new_session=True)
        procs.append(("gateway-stub", stub))
        _wait_port(stub_port, stub, "gateway-stub")
        procs.append(("worker", subprocess.Popen([*me, "worker"], env=env, start_new_session=True)))
        receiver = subprocess.Popen([*me, "serve", "--port", str(port)], env=env,
                                    start_new_session=True)
        procs.append(("receiver", receiver))
        _wait_port(port, receiver, "receiver")
        # The console, with a token made for this run unless the environment brings its own.
        console_token = env.get("RUNINFRA_CONSOLE_TOKEN") or secrets.token_urlsafe(32)
        console = subprocess.Popen([*me, "console", "--port", str(console_port)],
                                   env={**env, "RUNINFRA_CONSOLE_TOKEN": console_token}, start_new_session=True)
        procs.append(("console", console))
        _wait_port(console_port, console, "console")

        url = f"http://127.0.0.1:{port}/webhooks/runinfra"
        own_secret = not os.environ.get("RUNINFRA_WEBHOOK_SECRET")
        write_session(DevSession(
            pid=os.getpid(), redis_url=redis_url, receiver_url=url, gateway_url=f"http://127.0.0.1:{stub_port}/v1",
            webhook_secret=DEV_SECRET if own_secret else None, children={name: p.pid for name, p in procs},
        ), workdir)
        print(f"runinfra-webhooks dev: receiver {url}, gateway emulator http://127.0.0.1:{stub_port}/v1, "
              f"Redis {redis_url}", file=sys.stderr)
        # The token rides in the URL fragment, which the browser never sends: it reaches no server log.
        login = f"http://127.0.0.1:{console_port}/login"
        if not os.environ.get("RUNINFRA_CONSOLE_TOKEN"):
            login += f"#token={console_token}"
        print(f"console: {login}", file=sys.stderr)
        print("send a first event from another terminal in this directory (it finds this dev by "
              f"{workdir / 'dev.json'}):  runinfra-webhooks send transcription.completed", file=sys.stderr,
              flush=True)
        while all(p.poll() is None for _, p in procs):
            time.sleep(0.5)
        dead = [name for name, p in procs if p.poll() is not None]
        print(f"runinfra-webhooks dev: {', '.join(dead)} exited; stopping", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        remove_session(workdir, os.getpid())
        # Children run in their own sessions, so Ctrl-C reaches only us and they stop in order:
        # receiver and worker first, Redis last (a worker finishing a job still needs it).
        for _, p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=25)
            except subprocess.TimeoutExpired:
                p.kill()
