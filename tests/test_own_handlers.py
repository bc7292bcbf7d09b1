"""A team's own reactions, loaded from RUNINFRA_HANDLERS or an entry point, run by real receiver and worker
processes against the gateway emulator."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.builders import example_event, signed_delivery
from tests.processes import cli, stack_env, started_receiver, wait_until, worker_process
from tests.stubserver import StubServer, start_gateway_stub

TEAM_MODULE = '''
import json, os
from pydantic import BaseModel
from runinfra_webhooks import DeploymentFailed, Envelope, HandlerContext, PermanentError, handler


def note(line: dict) -> None:
    with open(os.environ["TEAM_OUT"], "a") as f:
        f.write(json.dumps(line) + "\\n")


class BatchData(BaseModel):
    batch_id: str
    size: int


@handler("batch.finished", model=BatchData)
async def summarise(event, ctx: HandlerContext) -> None:
    reply = await ctx.call_gateway("/chat/completions", {"model": "m", "messages": [
        {"role": "user", "content": f"summarise {event.data.batch_id}"}]}, step="summary")
    note({"handler": "summarise", "batch": event.data.batch_id, "size": event.data.size, "attempt": ctx.attempt,
          "request_id": reply.request_id, "key": ctx.idempotency_key("summary")})


@handler("batch.finished")
async def archive(event: Envelope, ctx: HandlerContext) -> None:
    note({"handler": "archive", "attempt": ctx.attempt, "data": event.data})
    flag = os.path.join(os.path.dirname(os.environ["TEAM_OUT"]), "archive-failed-once")
    if event.data["batch_id"].startswith("flaky") and not os.path.exists(flag):
        open(flag, "w").close()
        raise RuntimeError("object store away; secret-ish detail that must not be stored")


@handler("deployment.failed")
async def page_on_call(event: DeploymentFailed, ctx: HandlerContext) -> None:
    if event.data.error.code == "page_refused":
        raise PermanentError("oncall_unreachable", "the pager refused the page")
    note({"handler": "page_on_call", "deployment": event.data.deployment_id})


@handler("misc.untyped")
async def untyped(event: Envelope, ctx: HandlerContext) -> None:
    note({"handler": "untyped", "type": type(event).__name__, "data": event.data})
'''

ENTRY_MODULE = '''
import json, os
from runinfra_webhooks import Envelope, HandlerContext, handler


@handler("plugin.ping")
async def pong(event: Envelope, ctx: HandlerContext) -> None:
    with open(os.environ["TEAM_OUT"], "a") as f:
        f.write(json.dumps({"handler": "pong", "data": event.data}) + "\\n")
'''

ENTRY_SETUP = '''
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "team-plugin"
version = "1.0"

[project.entry-points."runinfra_webhooks.handlers"]
team = "team_plugin_reactions"

[tool.setuptools]
py-modules = ["team_plugin_reactions"]
'''


@pytest.fixture(scope="module")
def stub() -> Iterator[StubServer]:
    with start_gateway_stub() as server:
        yield server


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny distribution that exposes a handler module under the entry-point group, pip-installed aside."""
    src = tmp_path_factory.mktemp("plugin-src")
    (src / "pyproject.toml").write_text(ENTRY_SETUP)
    (src / "team_plugin_reactions.py").write_text(ENTRY_MODULE)
    site = tmp_path_factory.mktemp("plugin-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True, capture_output=True, timeout=300)
    return site


@pytest.fixture
def team_env(redis_url: str, stub: StubServer, tmp_path: Path, plugin_site: Path) -> dict[str, str]:
    stub.reset()
    modules = tmp_path / "team"
    modules.mkdir()
    (modules / "team_reactions.py").write_text(TEAM_MODULE)
    return stack_env(redis_url, stub.base_url, tmp_path / "artifacts", RUNINFRA_HANDLERS="team_reactions",
                     PYTHONPATH=f"{modules}:{plugin_site}", TEAM_OUT=str(tmp_path / "out.jsonl"))


@pytest.fixture
def stack(team_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    with started_receiver(team_env, tmp_path / "receiver.log") as (url, _), \
            worker_process(team_env, tmp_path / "worker.log"):
        yield url


def _post(url: str, event: dict[str, Any]) -> httpx.Response:
    body, headers = signed_delivery(event)
    return httpx.post(url + "/webhooks/runinfra", content=body, headers=headers, timeout=30)


def _state(env: dict[str, str], event_id: str) -> dict[str, Any]:
    out = cli(env, "events", "show", event_id)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def _wait_state(env: dict[str, str], event_id: str, state: str) -> dict[str, Any]:
    wait_until(lambda: _state(env, event_id).get("state") == state, timeout=30, what=f"{event_id} {state}",
               interval=0.2)
    return _state(env, event_id)


def _notes(env: dict[str, str]) -> list[dict[str, Any]]:
    path = Path(env["TEAM_OUT"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _event(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    return example_event("deployment.deleted", type=type_, data=data)


def test_a_custom_type_with_a_model_is_queued_and_handled_with_typed_data(
    stack: str, team_env: dict[str, str], stub: StubServer
) -> None:
    """batch.finished (outside the catalogue) is answered 202 queued and each handler receives it, typed."""
    event = _event("batch.finished", {"batch_id": "b-1", "size": 3})
    answer = _post(stack, event)
    assert (answer.status_code, answer.json()["status"]) == (202, "queued")
    state = _wait_state(team_env, event["id"], "succeeded")
    notes = _notes(team_env)
    assert [n["handler"] for n in notes] == ["summarise", "archive"]
    assert (notes[0]["batch"], notes[0]["size"]) == ("b-1", 3)
    assert notes[0]["request_id"] in state["gateway_request_ids"]
    assert stub.charges()["by_key"] == {notes[0]["key"]: 1}


def test_a_custom_type_whose_data_fails_its_model_is_dead_lettered_at_once(stack: str) -> None:
    """data that does not fit the handler's model is answered 202 dead_lettered invalid_payload."""
    answer = _post(stack, _event("batch.finished", {"batch_id": "b-2", "size": "many"}))
    assert answer.status_code == 202
    assert answer.json() | {"event_id": ""} == {"status": "dead_lettered", "reason": "invalid_payload", "event_id": ""}


def test_a_type_no_handler_takes_is_still_ignored(stack: str) -> None:
    """A signed type outside the catalogue that no handler declares stays 200 ignored."""
    answer = _post(stack, _event("nobody.listens", {"x": 1}))
    assert (answer.status_code, answer.json()["status"]) == (200, "ignored")


def test_a_handler_without_model_receives_the_envelope(stack: str, team_env: dict[str, str]) -> None:
    """Without model= the type is queued and the handler gets the Envelope with data as sent."""
    event = _event("misc.untyped", {"anything": [1, 2]})
    assert _post(stack, event).status_code == 202
    _wait_state(team_env, event["id"], "succeeded")
    assert _notes(team_env) == [{"handler": "untyped", "type": "Envelope", "data": {"anything": [1, 2]}}]


def test_a_handler_failing_after_another_succeeded_does_not_rerun_the_first(
    stack: str, team_env: dict[str, str], stub: StubServer
) -> None:
    """archive fails once after summarise finished: the retry runs archive alone; one charge in all."""
    event = _event("batch.finished", {"batch_id": "flaky-1", "size": 1})
    assert _post(stack, event).status_code == 202
    state = _wait_state(team_env, event["id"], "succeeded")
    notes = _notes(team_env)
    assert [(n["handler"], n["attempt"]) for n in notes] == [("summarise", 1), ("archive", 1), ("archive", 2)]
    assert state["attempts"] == 2
    assert stub.charges()["total"] == 1
    assert len([c for c in stub.calls() if c["route"] == "/v1/chat/completions"]) == 1


def test_a_permanent_error_dead_letters_with_its_code(stack: str, team_env: dict[str, str]) -> None:
    """PermanentError("oncall_unreachable", ...) dead-letters the event with that reason, after the built-ins ran."""
    event = example_event("deployment.failed")
    event["data"]["error"] = {"code": "page_refused", "message": "no"}
    assert _post(stack, event).status_code == 202
    state = _wait_state(team_env, event["id"], "dead_lettered")
    assert (state["reason"], state["attempts"]) == ("oncall_unreachable", 1)
    registry = json.loads(cli(team_env, "deployments", "--json").stdout)
    assert event["data"]["deployment_id"] in {row["deployment_id"] for row in registry}


def test_a_handler_from_an_installed_entry_point_runs(stack: str, team_env: dict[str, str]) -> None:
    """The tiny distribution's entry point is loaded by the receiver (queued) and the worker (handled)."""
    event = _event("plugin.ping", {"n": 1})
    assert _post(stack, event).json()["status"] == "queued"
    _wait_state(team_env, event["id"], "succeeded")
    assert _notes(team_env) == [{"handler": "pong", "data": {"n": 1}}]


def test_handlers_command_lists_every_handler_with_its_origin(team_env: dict[str, str]) -> None:
    """`handlers --json`: built-ins first, then RUNINFRA_HANDLERS, then the entry point, each with its origin."""
    out = cli(team_env, "handlers", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    by_name = {(r["type"], r["handler"]): r["origin"] for r in rows}
    assert by_name[("deployment.failed", "runinfra_webhooks.handlers.deployments:handle")] == "builtin"
    assert by_name[("batch.finished", "team_reactions:summarise")] == "RUNINFRA_HANDLERS"
    assert by_name[("plugin.ping", "team_plugin_reactions:pong")].startswith("entry point team")
    failed = [r["handler"] for r in rows if r["type"] == "deployment.failed"]
    assert failed == ["runinfra_webhooks.handlers.deployments:handle", "team_reactions:page_on_call"]
    text = cli(team_env, "handlers")
    assert "team_reactions:summarise" in text.stdout and "RUNINFRA_HANDLERS" in text.stdout


def test_builtin_reactions_can_be_switched_off(team_env: dict[str, str]) -> None:
    """RUNINFRA_BUILTIN_REACTIONS= (empty) leaves only the team's own handlers."""
    rows = json.loads(cli({**team_env, "RUNINFRA_BUILTIN_REACTIONS": ""}, "handlers", "--json").stdout)
    assert rows and all(r["origin"] != "builtin" for r in rows)
    only = json.loads(cli({**team_env, "RUNINFRA_BUILTIN_REACTIONS": "followup"}, "handlers", "--json").stdout)
    assert {r["handler"] for r in only if r["origin"] == "builtin"} == {"runinfra_webhooks.handlers.followup:handle"}


@pytest.mark.parametrize(("source", "expected"), [
    (None, "module 'no_such_team_module' cannot be imported: ModuleNotFoundError"),
    ("import json\nraise ValueError('broken at import')\n", "cannot be imported: ValueError: broken at import"),
    ("from runinfra_webhooks import handler\n@handler('a.b')\ndef sync(event, ctx):\n    pass\n",
     "handler bad_team:sync must be an async def taking (event, ctx)"),
    ("from runinfra_webhooks import handler\n@handler('a.b')\nasync def one(event):\n    pass\n",
     "handler bad_team:one must be an async def taking (event, ctx)"),
    ("from runinfra_webhooks import handler\n@handler('Not A Type')\nasync def h(event, ctx):\n    pass\n",
     "an event type is dot-separated lowercase words"),
])
def test_a_bad_handler_module_is_named_in_one_line(
    team_env: dict[str, str], tmp_path: Path, source: str | None, expected: str
) -> None:
    """A module that does not import or a handler of the wrong shape: exit 2, one line naming it."""
    module = "no_such_team_module"
    if source is not None:
        module = "bad_team"
        (tmp_path / "team" / "bad_team.py").write_text(source)
    out = cli({**team_env, "RUNINFRA_HANDLERS": module}, "handlers")
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "RUNINFRA_HANDLERS" in lines[0] and expected in lines[0], lines


@pytest.mark.parametrize("command", [["serve", "--port", "1"], ["worker"]])
def test_serve_and_worker_refuse_to_start_with_a_broken_handler_module(
    team_env: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    """The receiver and the worker load the handlers at start-up and stop there: exit 2, one line."""
    (tmp_path / "team" / "bad_team.py").write_text("raise ImportError('missing dependency')\n")
    out = cli({**team_env, "RUNINFRA_HANDLERS": "team_reactions,bad_team"}, *command)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip() == ("runinfra-webhooks: RUNINFRA_HANDLERS: module 'bad_team' cannot be imported: "
                                  "ImportError: missing dependency")
