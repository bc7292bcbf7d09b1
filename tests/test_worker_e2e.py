"""The whole loop with real processes: receiver, `runinfra-webhooks worker`, gateway emulator, Redis."""

from __future__ import annotations

import json
import time
import wave
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.builders import example_event, post_delivery, signed_delivery
from tests.processes import Proc, cli, stack_env, wait_until, worker_process
from tests.stubserver import StubServer, start_gateway_stub


@pytest.fixture
def env(redis_url: str, stub: StubServer, tmp_path: Path) -> dict[str, str]:
    return stack_env(redis_url, stub.base_url, tmp_path / "artifacts")


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[Proc]:
    with worker_process(env, tmp_path / "worker.log") as proc:
        yield proc


def deliver(receiver_url: str, event: dict[str, Any]) -> httpx.Response:
    body, headers = signed_delivery(event)
    return post_delivery(receiver_url, body, headers)


def state_of(env: dict[str, str], event_id: str) -> dict[str, Any]:
    out = cli(env, "events", "show", event_id)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def wait_state(env: dict[str, str], event_id: str, state: str, timeout: float = 30) -> dict[str, Any]:
    wait_until(lambda: state_of(env, event_id).get("state") == state, timeout=timeout,
               what=f"{event_id} to be {state}", interval=0.2)
    return state_of(env, event_id)


def speech_calls(stub: StubServer) -> list[dict[str, Any]]:
    return [c for c in stub.calls() if c["route"] == "/v1/audio/speech"]


def test_deployment_events_update_the_registry_out_of_order_safe(
    receiver_url: str, env: dict[str, str], worker: Proc
) -> None:
    """A newer event applies; an older one arriving later is recorded but does not change the state."""
    newer = example_event("deployment.failed", created=2_000)
    older = example_event("deployment.created", created=1_000)
    older["data"]["deployment_id"] = newer["data"]["deployment_id"]
    assert deliver(receiver_url, newer).status_code == 202
    wait_state(env, newer["id"], "succeeded")
    assert deliver(receiver_url, older).status_code == 202
    wait_state(env, older["id"], "succeeded")
    out = cli(env, "deployments", "--json")
    [row] = [r for r in json.loads(out.stdout) if r["deployment_id"] == newer["data"]["deployment_id"]]
    assert row["status"] == "failed"
    assert row["updated"] == 2_000
    assert row["last_event_id"] == newer["id"]
    human = cli(env, "deployments").stdout
    assert newer["data"]["deployment_id"] in human and "failed" in human


def test_transcription_speaks_a_follow_up_with_one_charge(
    receiver_url: str, env: dict[str, str], worker: Proc, stub: StubServer, tmp_path: Path
) -> None:
    """transcription.completed -> one /audio/speech call with the right headers, a WAV file, state succeeded."""
    event = example_event("transcription.completed")
    assert deliver(receiver_url, event).status_code == 202
    record = wait_state(env, event["id"], "succeeded")
    [call] = speech_calls(stub)
    assert call["authorization_ok"] is True
    assert call["idempotency_key"].startswith("rwh_")
    assert call["body"]["model"] == "kokoro-82m" and call["body"]["voice"] == "af_heart"
    assert event["data"]["text"] in call["body"]["input"]
    assert stub.charges()["by_key"] == {call["idempotency_key"]: 1}
    assert record["gateway_request_ids"] and record["attempts"] == 1
    with wave.open(str(tmp_path / "artifacts" / "audio" / f"{event['id']}.wav")) as w:
        assert w.getnframes() > 0


def test_embeddings_deployment_re_embeds_bound_collections(
    receiver_url: str, env: dict[str, str], worker: Proc, stub: StubServer, tmp_path: Path
) -> None:
    """corpus load -> deployment.ready (embeddings) -> vectors stored per revision -> corpus export."""
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": f"document {i}"}) + "\n" for i in range(5)))
    loaded = cli(env, "corpus", "load", str(docs), "--collection", "kb", "--model", "bge-m3")
    assert loaded.returncode == 0, loaded.stderr
    event = example_event("deployment.ready")
    event["data"].update(model="bge-m3", modality="embeddings", revision="rev_9")
    env2 = dict(env)
    assert deliver(receiver_url, event).status_code == 202
    wait_state(env2, event["id"], "succeeded")
    exported = cli(env, "corpus", "export", "--collection", "kb")
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [r["id"] for r in rows] == [f"d{i}" for i in range(5)]
    assert {(r["model"], r["revision"]) for r in rows} == {("bge-m3", "rev_9")}
    assert all(len(r["embedding"]) > 0 for r in rows)
    assert stub.charges()["by_route"] == {"/v1/embeddings": 1}


def test_transient_gateway_errors_end_succeeded_with_one_charge(
    receiver_url: str, env: dict[str, str], worker: Proc, stub: StubServer
) -> None:
    """Scripted 503, 429 and 503 on /audio/speech are retried; the event succeeds with one charge."""
    stub.set_faults(route="/v1/audio/speech", script=[503, 429, 503], retry_after=0.1)
    event = example_event("transcription.completed")
    deliver(receiver_url, event)
    wait_state(env, event["id"], "succeeded")
    charges = stub.charges()
    assert charges["total"] == 1
    assert len({c["idempotency_key"] for c in speech_calls(stub)}) == 1
    assert len(speech_calls(stub)) == 4


def test_a_400_dead_letters_without_retry_and_replay_uses_a_new_key(
    receiver_url: str, env: dict[str, str], worker: Proc, stub: StubServer
) -> None:
    """A gateway 400 dead-letters at once; `replay ID` re-runs it under a new Idempotency-Key."""
    stub.set_faults(route="/v1/audio/speech", script=[400])
    event = example_event("transcription.completed")
    deliver(receiver_url, event)
    parked = wait_state(env, event["id"], "dead_lettered")
    assert parked["attempts"] == 1
    assert parked["reason"].startswith("gateway_")
    assert len(speech_calls(stub)) == 1
    listed = cli(env, "dead-letter", "list", "--json")
    assert event["id"] in {r["event_id"] for r in json.loads(listed.stdout)}

    replayed = cli(env, "replay", event["id"])
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout)["generation"] == 1
    done = wait_state(env, event["id"], "succeeded")
    assert done["generation"] == 1
    first, second = (c["idempotency_key"] for c in speech_calls(stub))
    assert first != second
    assert stub.charges()["total"] == 1
    assert cli(env, "replay", event["id"]).returncode == 1  # no longer dead-lettered


def test_duplicate_storm_charges_one_speech(
    receiver_url: str, env: dict[str, str], worker: Proc, stub: StubServer
) -> None:
    """50 concurrent deliveries of one transcription.completed -> one queued, one speech charge."""
    event = example_event("transcription.completed")
    body, headers = signed_delivery(event)
    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(
            lambda _: post_delivery(receiver_url, body, headers).json()["status"],
            range(50)))
    assert statuses.count("queued") == 1
    wait_state(env, event["id"], "succeeded")
    time.sleep(0.5)
    assert stub.charges()["total"] == 1


def test_a_killed_worker_s_event_is_finished_by_a_new_worker_within_60_s(
    receiver_url: str, redis_url: str, tmp_path: Path
) -> None:
    """SIGKILL during a slow gateway call; a new worker finishes the event, and the key is charged once."""
    with start_gateway_stub(latency=3.0) as slow:
        env = stack_env(redis_url, slow.base_url, tmp_path / "artifacts")
        event = example_event("transcription.completed")
        first = Proc(["worker"], env, tmp_path / "w1.log")
        try:
            deliver(receiver_url, event)
            wait_until(lambda: len(speech_calls(slow)) == 1, timeout=20, what="the speech call to start")
            first.kill()
        finally:
            first.terminate()
        killed_at = time.monotonic()
        with worker_process(env, tmp_path / "w2.log"):
            wait_state(env, event["id"], "succeeded", timeout=60)
        recovery = time.monotonic() - killed_at
        print(f"recovery after SIGKILL: {recovery:.1f} s")
        assert recovery < 60
        charges = slow.charges()
        assert charges["total"] == 1, charges
        assert all(n == 1 for n in charges["by_key"].values())


def test_sigterm_lets_a_running_job_finish_before_the_worker_exits(
    receiver_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Graceful shutdown: a job in a slow gateway call completes, then the worker exits within the grace."""
    with start_gateway_stub(latency=2.0) as slow:
        env = stack_env(redis_url, slow.base_url, tmp_path / "artifacts", RUNINFRA_SHUTDOWN_GRACE="10")
        event = example_event("transcription.completed")
        proc = Proc(["worker"], env, tmp_path / "w.log")
        deliver(receiver_url, event)
        wait_until(lambda: len(speech_calls(slow)) == 1, timeout=20, what="the speech call to start")
        stopping = time.monotonic()
        code = proc.terminate(timeout=30)
        assert time.monotonic() - stopping < 12
        assert code == 0, proc.output()[-2000:]
        assert state_of(env, event["id"])["state"] == "succeeded"
        assert slow.charges()["total"] == 1


def test_replay_all_dead_lettered_requeues_each_with_progress(
    receiver_url: str, env: dict[str, str], worker: Proc, stub: StubServer
) -> None:
    """Three events dead-lettered by 400s are all replayed with new keys and then succeed."""
    stub.set_faults(route="/v1/audio/speech", script=[400, 400, 400])
    events = [example_event("transcription.completed") for _ in range(3)]
    for event in events:
        deliver(receiver_url, event)
    for event in events:
        wait_state(env, event["id"], "dead_lettered")
    out = cli(env, "replay", "--all-dead-lettered")
    assert out.returncode == 0, out.stderr
    assert {json.loads(line)["event_id"] for line in out.stdout.splitlines()} == {e["id"] for e in events}
    assert "replayed 3/3" in out.stderr
    for event in events:
        assert wait_state(env, event["id"], "succeeded")["generation"] == 1
    assert stub.charges()["total"] == 3


def test_a_corpus_too_large_for_one_attempt_is_finished_over_several(
    receiver_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Attempts that commit batches before timing out do not count towards the attempt limit."""
    with start_gateway_stub(latency=0.25) as slow:
        env = stack_env(redis_url, slow.base_url, tmp_path / "artifacts", RUNINFRA_JOB_TIMEOUT="1",
                        RUNINFRA_MAX_ATTEMPTS="2", RUNINFRA_EMBED_BATCH_SIZE="1", RUNINFRA_EMBED_CONCURRENCY="1")
        docs = tmp_path / "docs.jsonl"
        docs.write_text("".join(json.dumps({"id": f"d{i}", "text": f"doc {i}"}) + "\n" for i in range(12)))
        assert cli(env, "corpus", "load", str(docs), "--collection", "big", "--model", "bge-m3").returncode == 0
        event = example_event("deployment.updated")
        event["data"].update(model="bge-m3", modality="embeddings", revision="rev_big")
        with worker_process(env, tmp_path / "w.log"):
            deliver(receiver_url, event)
            done = wait_state(env, event["id"], "succeeded", timeout=90)
        assert done["attempts"] >= 1
        rows = cli(env, "corpus", "export", "--collection", "big").stdout.splitlines()
        assert len(rows) == 12
        assert slow.charges()["total"] == 12
