"""The console script from the shell: usage errors, settings errors, `send`, and `dev` end to end."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from runinfra_webhooks.service.devtools.session import DevSession, find_running_dev, write_session
from tests.builders import SECRET
from tests.processes import cli, stack_env, wait_until
from tests.redis_server import free_port


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return stack_env(redis_url, "http://127.0.0.1:9/v1", tmp_path / "artifacts")


def test_bad_usage_exits_2(env: dict[str, str]) -> None:
    """An unknown command, a missing argument or an unknown event type is exit 2."""
    assert cli(env, "frobnicate").returncode == 2
    assert cli(env, "events", "show").returncode == 2
    assert cli(env, "send", "no.such.type").returncode == 2


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("RUNINFRA_WEBHOOK_SECRET", None, "RUNINFRA_WEBHOOK_SECRET: required setting is not set"),
        ("RUNINFRA_WEBHOOK_SECRET", "whsec_a,,whsec_b", "RUNINFRA_WEBHOOK_SECRET: invalid setting"),
        ("RUNINFRA_WEBHOOK_SECRET", "whsec_a b", "RUNINFRA_WEBHOOK_SECRET: invalid setting"),
        ("RUNINFRA_WEBHOOK_TOLERANCE", "soon", "RUNINFRA_WEBHOOK_TOLERANCE: invalid setting"),
        ("RUNINFRA_WEBHOOK_MAX_BODY", "-1", "RUNINFRA_WEBHOOK_MAX_BODY: invalid setting"),
    ],
)
def test_a_bad_setting_stops_start_up_with_one_line_naming_it(
    env: dict[str, str], variable: str, value: str | None, needle: str
) -> None:
    """`serve` refuses to start: exit 2, one stderr line naming the variable, never echoing a secret."""
    env = dict(env)
    if value is None:
        env.pop(variable, None)
    else:
        env[variable] = value
    out = cli(env, "serve", "--port", str(free_port()), timeout=30)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]
    assert "whsec_a" not in out.stderr


def test_events_show_of_an_unknown_id_exits_1(env: dict[str, str]) -> None:
    """A failed lookup is exit 1 with a readable message; no secret is needed for it."""
    env = dict(env)
    env.pop("RUNINFRA_WEBHOOK_SECRET")
    out = cli(env, "events", "show", "evt_nope")
    assert out.returncode == 1 and "evt_nope" in out.stderr


def test_send_signs_and_posts_an_example_of_each_type(env: dict[str, str], receiver_url: str) -> None:
    """`send TYPE` posts a signed example the receiver accepts, and prints the answer as JSON."""
    for event_type in ("deployment.created", "deployment.ready", "deployment.updated", "deployment.failed",
                       "deployment.deleted", "transcription.completed"):
        out = cli(env, "send", event_type, "--url", receiver_url + "/webhooks/runinfra")
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert answer["status_code"] == 202 and answer["response"]["status"] == "queued"
    out = cli(env, "send", "deployment.ready", "--url", receiver_url + "/webhooks/runinfra",
              "--data", '{"revision": "rev_42"}', "--id", "evt_cli_fixed")
    assert json.loads(out.stdout)["event_id"] == "evt_cli_fixed"
    again = cli(env, "send", "deployment.ready", "--url", receiver_url + "/webhooks/runinfra", "--id", "evt_cli_fixed")
    assert json.loads(again.stdout)["response"]["status"] == "duplicate"


def test_send_with_the_wrong_secret_is_rejected_and_exits_1(env: dict[str, str], receiver_url: str) -> None:
    """A 401 answer is a failed operation: exit 1, and the answer names the outcome."""
    env = dict(env, RUNINFRA_WEBHOOK_SECRET="whsec_wrong")
    out = cli(env, "send", "deployment.created", "--url", receiver_url + "/webhooks/runinfra")
    assert out.returncode == 1
    assert json.loads(out.stdout)["response"]["code"] == "signature_mismatch"


def _plain_env(tmp_path: Path) -> dict[str, str]:
    """A newcomer's shell: no RUNINFRA_* and no REDIS_URL exported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNINFRA_") and k != "REDIS_URL"}
    env["RUNINFRA_ARTIFACTS_DIR"] = str(tmp_path / "artifacts")
    return env


@contextlib.contextmanager
def _dev(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, Any], Path]]:
    """`dev` started in tmp_path, once it has written its session file: (process, session, log)."""
    port, stub_port, console_port = free_port(), free_port(), free_port()
    log = tmp_path / "dev.log"
    session_file = tmp_path / ".runinfra-dev" / "dev.json"
    with log.open("w") as out:
        dev = subprocess.Popen([sys.executable, "-m", "runinfra_webhooks", "dev", "--port", str(port), "--stub-port",
                                str(stub_port), "--console-port", str(console_port)], env=_plain_env(tmp_path),
                               cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: session_file.exists() or dev.poll() is not None, timeout=60, what="dev to start")
        assert dev.poll() is None, log.read_text()
        yield dev, {**json.loads(session_file.read_text()), "console_port": console_port}, log
    finally:
        if dev.poll() is None:
            dev.send_signal(signal.SIGINT)
            dev.wait(60)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_dev_runs_the_whole_loop_and_a_second_terminal_needs_nothing_exported(tmp_path: Path) -> None:
    """Beside a running `dev`, `send`, `events show` and `audit verify` work in its directory with nothing set."""
    with _dev(tmp_path) as (dev, session, log):
        second = _plain_env(tmp_path)
        login = f"http://127.0.0.1:{session['console_port']}/login#token="
        assert login in log.read_text()
        token = log.read_text().split(login)[1].split()[0]
        assert len(token) >= 32
        assert httpx.get(f"http://127.0.0.1:{session['console_port']}/api/v1/stats",
                         headers={"Authorization": f"Bearer {token}"}).status_code == 200

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "runinfra_webhooks", *args], env=second, cwd=tmp_path,
                                  capture_output=True, text=True, timeout=60, check=False)

        sent = run("send", "transcription.completed")
        assert sent.returncode == 0, sent.stderr
        event_id = json.loads(sent.stdout)["event_id"]

        def succeeded() -> bool:
            shown = run("events", "show", event_id)
            return shown.returncode == 0 and json.loads(shown.stdout)["state"] == "succeeded"

        wait_until(succeeded, timeout=60, what="the dev stack to process the event", interval=0.3)
        assert (tmp_path / "artifacts" / "audio" / f"{event_id}.wav").exists()
        verified = run("audit", "verify")
        assert verified.returncode == 0, verified.stderr
        assert "audit log ok" in verified.stderr
        charges = httpx.get(session["gateway_url"].removesuffix("/v1") + "/_stub/charges").json()
        assert charges["total"] == 1
        dev.send_signal(signal.SIGINT)
        dev.wait(60)
        assert dev.returncode in (0, 130)
    with pytest.raises(httpx.ConnectError):
        httpx.get(session["receiver_url"].removesuffix("/webhooks/runinfra") + "/healthz", timeout=2)
    assert SECRET not in log.read_text()
    # Away from that directory, or once dev has stopped, nothing is found: the plain default applies.
    assert not (tmp_path / ".runinfra-dev" / "dev.json").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_dev_stops_everything_it_started_on_a_signal(tmp_path: Path, signum: signal.Signals) -> None:
    """SIGINT, SIGTERM or SIGHUP to `dev` ends its Redis, emulator, worker, receiver and console, freeing ports."""
    with _dev(tmp_path) as (dev, session, _):
        children = session["children"]
        assert set(children) == {"redis", "gateway-stub", "worker", "receiver", "console"}
        dev.send_signal(signum)
        dev.wait(60)
    wait_until(lambda: all(_gone(pid) for pid in children.values()), timeout=10, what="dev's children to exit")
    assert dev.returncode == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(session["receiver_url"], timeout=2)


def test_a_stale_dev_session_file_is_ignored(tmp_path: Path) -> None:
    """A session file whose dev is gone supplies nothing; a live one supplies only what is not exported."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    session = DevSession(pid=int(finished.stdout), redis_url="redis://127.0.0.1:1/0", receiver_url="http://x",
                         gateway_url="http://y", webhook_secret="whsec_dev")
    (tmp_path / ".runinfra-dev").mkdir()
    write_session(session, tmp_path / ".runinfra-dev")
    assert find_running_dev(tmp_path) is None
    write_session(DevSession(**{**session.__dict__, "pid": os.getpid()}), tmp_path / ".runinfra-dev")
    live = find_running_dev(tmp_path)
    assert live is not None and live.pid == os.getpid()
    assert (tmp_path / ".runinfra-dev" / "dev.json").stat().st_mode & 0o077 == 0
