"""The console script from the shell: usage errors, settings errors, `send`, and `dev` end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.builders import SECRET
from tests.processes import stack_env, wait_until
from tests.redis_server import free_port


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runinfra_webhooks", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


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


def test_dev_runs_the_whole_loop_on_one_machine(tmp_path: Path) -> None:
    """`dev` starts Redis, emulator, worker, receiver and console; a `send` ends as a spoken follow-up; Ctrl-C
    stops all."""
    port, stub_port, console_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNINFRA_") and k != "REDIS_URL"}
    env["RUNINFRA_ARTIFACTS_DIR"] = str(tmp_path / "artifacts")
    log = tmp_path / "dev.log"
    with log.open("w") as out:
        dev = subprocess.Popen([sys.executable, "-m", "runinfra_webhooks", "dev", "--port", str(port), "--stub-port",
                                str(stub_port), "--console-port", str(console_port)], env=env, cwd=tmp_path,
                               stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "send a first event" in log.read_text() or dev.poll() is not None, timeout=60,
                   what="dev to start")
        hint = log.read_text()
        assert dev.poll() is None, hint
        login = f"http://127.0.0.1:{console_port}/login#token="
        assert login in hint
        token = hint.split(login)[1].split()[0]
        assert len(token) >= 32
        assert httpx.get(f"http://127.0.0.1:{console_port}/api/v1/stats",
                         headers={"Authorization": f"Bearer {token}"}).status_code == 200
        redis_url = hint.split("REDIS_URL=")[1].split()[0]
        send_env = dict(env, RUNINFRA_WEBHOOK_SECRET="whsec_dev_local_only", REDIS_URL=redis_url)
        sent = cli(send_env, "send", "transcription.completed", "--url", f"http://127.0.0.1:{port}/webhooks/runinfra")
        event_id = json.loads(sent.stdout)["event_id"]

        def succeeded() -> bool:
            shown = cli(send_env, "events", "show", event_id)
            return shown.returncode == 0 and json.loads(shown.stdout)["state"] == "succeeded"

        wait_until(succeeded, timeout=60, what="the dev stack to process the event", interval=0.3)
        assert (tmp_path / "artifacts" / "audio" / f"{event_id}.wav").exists()
        charges = httpx.get(f"http://127.0.0.1:{stub_port}/_stub/charges").json()
        assert charges["total"] == 1
    finally:
        dev.send_signal(signal.SIGINT)
        dev.wait(60)
    assert dev.returncode in (0, 130)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    assert SECRET not in log.read_text()
