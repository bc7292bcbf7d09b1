"""The gateway stub over real HTTP: idempotency, charges, faults, auth, payloads, the control API."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import time
import wave
from typing import Any

import httpx
import pytest

from runinfra_webhooks.service.devtools.gateway_stub import create_stub_app
from tests.stubserver import STUB_API_KEY, StubServer, start_gateway_stub

AUTH = {"Authorization": f"Bearer {STUB_API_KEY}"}
EMBED = {"model": "stub-embed", "input": ["hello world", "second"]}


def post(
    stub: StubServer, route: str, body: Any, key: str | None = None, *, timeout: float = 10, **headers: str
) -> httpx.Response:
    """POST with the stub's key, an optional Idempotency-Key and extra headers (underscores become dashes)."""
    all_headers = AUTH | {name.replace("_", "-"): value for name, value in headers.items()}
    if key:
        all_headers["Idempotency-Key"] = key
    return httpx.post(f"{stub.base_url}{route}", json=body, headers=all_headers, timeout=timeout)


# --- idempotency -----------------------------------------------------------------------------------------
def test_replays_completed_key_with_header_and_one_charge(stub: StubServer) -> None:
    """A second request with the same key and body gets the stored answer, flagged, and is not charged."""
    first = post(stub, "/embeddings", EMBED, key="k-replay")
    second = post(stub, "/embeddings", EMBED, key="k-replay")
    assert first.status_code == second.status_code == 200
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert second.headers["x-request-id"] != first.headers["x-request-id"]
    assert stub.charges() == {"total": 1, "by_key": {"k-replay": 1}, "by_route": {"/v1/embeddings": 1}}


def test_rejects_same_key_with_different_body_with_422(stub: StubServer) -> None:
    """Reusing a key for another body is refused with idempotency_key_reused and not charged."""
    assert post(stub, "/embeddings", EMBED, key="k-reuse").status_code == 200
    response = post(stub, "/embeddings", {"model": "stub-embed", "input": "other"}, key="k-reuse")
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "idempotency_key_reused"
    assert stub.charges()["total"] == 1


async def test_answers_409_while_first_request_with_key_in_flight(stub: StubServer) -> None:
    """The same key and body arriving while the first is still running gets idempotency_conflict."""
    stub.set_faults(route="*", latency=0.5)
    async with httpx.AsyncClient(base_url=stub.base_url, headers=AUTH | {"Idempotency-Key": "k-flight"}) as client:
        first = asyncio.create_task(client.post("/embeddings", json=EMBED))
        await asyncio.to_thread(stub.wait_for, lambda s: len(s.calls()) == 1)
        second = await client.post("/embeddings", json=EMBED)
        assert second.status_code == 409
        assert second.json()["error"]["type"] == "idempotency_conflict"
        assert (await first).status_code == 200
        third = await client.post("/embeddings", json=EMBED)
    assert third.headers["idempotent-replayed"] == "true"
    assert stub.charges()["by_key"] == {"k-flight": 1}


def test_requests_without_key_are_charged_every_time(stub: StubServer) -> None:
    """No Idempotency-Key means no replay: each request is new work and a new charge."""
    for _ in range(3):
        response = post(stub, "/embeddings", EMBED)
        assert response.status_code == 200
        assert "idempotent-replayed" not in response.headers
    assert stub.charges() == {"total": 3, "by_key": {}, "by_route": {"/v1/embeddings": 3}}


def test_failed_request_frees_key_for_fresh_run(stub: StubServer) -> None:
    """A faulted answer is not stored: the retry with the same key runs fresh and is charged once."""
    stub.set_faults(route="*", script=[500])
    assert post(stub, "/embeddings", EMBED, key="k-fresh").status_code == 500
    retry = post(stub, "/embeddings", EMBED, key="k-fresh")
    assert retry.status_code == 200
    assert "idempotent-replayed" not in retry.headers
    assert stub.charges()["by_key"] == {"k-fresh": 1}


def test_invalid_request_with_key_is_not_stored_or_charged(stub: StubServer) -> None:
    """A 400 answer frees the key and costs nothing."""
    bad = post(stub, "/embeddings", {"model": "stub-embed", "input": []}, key="k-bad")
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"
    assert post(stub, "/embeddings", EMBED, key="k-bad").status_code == 200
    assert stub.charges()["total"] == 1


def test_rejects_idempotency_key_longer_than_255(stub: StubServer) -> None:
    """The gateway contract caps keys at 255 characters."""
    assert post(stub, "/embeddings", EMBED, key="k" * 256).status_code == 400
    assert post(stub, "/embeddings", EMBED, key="k" * 255).status_code == 200


def test_records_charge_when_client_disconnects_mid_request(stub: StubServer) -> None:
    """A client that gives up mid-call (a killed worker) is still charged, and its retry gets the replay."""
    stub.set_faults(route="*", latency=0.6)
    with pytest.raises(httpx.ReadTimeout):
        post(stub, "/embeddings", EMBED, key="k-gone", timeout=0.1)
    stub.wait_for(lambda s: s.charges()["by_key"].get("k-gone") == 1)
    retry = post(stub, "/embeddings", EMBED, key="k-gone")
    assert retry.status_code == 200
    assert retry.headers["idempotent-replayed"] == "true"
    assert stub.charges()["total"] == 1


async def test_work_survives_cancellation_of_the_request_handler() -> None:
    """Cancelling the handler itself (not only closing the socket) cannot lose the work or its charge."""
    app = create_stub_app(api_key=None, latency=0.3)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stub") as client:
        request = asyncio.create_task(client.post("/v1/embeddings", json=EMBED, headers={"Idempotency-Key": "k-c"}))
        await asyncio.sleep(0.1)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        assert (await client.get("/_stub/charges")).json()["total"] == 0
        await asyncio.sleep(0.4)
        assert (await client.get("/_stub/charges")).json()["by_key"] == {"k-c": 1}
        replay = await client.post("/v1/embeddings", json=EMBED, headers={"Idempotency-Key": "k-c"})
    assert replay.headers["idempotent-replayed"] == "true"


# --- faults -------------------------------------------------------------------------------------------
def test_scripted_503_then_success_is_charged_once(stub: StubServer) -> None:
    """Scripted faults are consumed in order, one per request, and an injected error is never charged."""
    stub.set_faults(route="/v1/embeddings", script=[503, 503, 200])
    statuses = [post(stub, "/embeddings", EMBED, key="k-503").status_code for _ in range(4)]
    assert statuses == [503, 503, 200, 200]
    assert stub.charges()["total"] == 1
    assert [c["fault"] for c in stub.calls()] == [503, 503, None, None]


def test_429_carries_retry_after(stub: StubServer) -> None:
    """An injected 429 says when to come back, in whole seconds."""
    stub.set_faults(script=[429, 429], retry_after=2.5)
    response = post(stub, "/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.json()["error"]["type"] == "rate_limit_error"
    stub.set_faults(script=[429])
    assert post(stub, "/embeddings", EMBED).headers["retry-after"] == "1"


def test_fault_plan_with_duration_ends_by_itself(stub: StubServer) -> None:
    """A plan set with a duration answers its faults for that long, then lets calls through again."""
    stub.set_faults(route="/v1/embeddings", rates={"503": 1.0}, duration=0.4)
    assert post(stub, "/embeddings", EMBED).status_code == 503
    time.sleep(0.5)
    assert post(stub, "/embeddings", EMBED).status_code == 200


def test_calls_record_arrival_answer_and_in_flight(stub: StubServer) -> None:
    """Each call says when it arrived and was answered and how many calls of its route were in flight."""
    stub.set_faults(route="/v1/embeddings", latency=0.3)

    async def three() -> None:
        async with httpx.AsyncClient(base_url=stub.base_url, headers=AUTH) as client:
            await asyncio.gather(*(client.post("/embeddings", json=EMBED) for _ in range(3)))

    before = time.time()
    asyncio.run(three())
    calls = stub.calls()
    assert sorted(c["in_flight"] for c in calls) == [1, 2, 3]
    for c in calls:
        assert before <= c["arrived"] <= c["answered"] <= time.time()
        assert c["answered"] - c["arrived"] >= 0.29
    post(stub, "/embeddings", EMBED)
    assert stub.calls()[-1]["in_flight"] == 1


def test_route_faults_leave_other_routes_alone(stub: StubServer) -> None:
    """A plan for one route does not touch another."""
    stub.set_faults(route="/v1/chat/completions", rates={"500": 1.0})
    assert post(stub, "/embeddings", EMBED).status_code == 200
    assert (
        post(stub, "/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}]}).status_code
        == 500
    )


def test_random_rates_are_reproducible_with_seed(stub: StubServer) -> None:
    """The same seed draws the same faults."""
    runs = []
    for _ in range(2):
        stub.set_faults(rates={"500": 0.3, "429": 0.3}, seed=7)
        runs.append([post(stub, "/embeddings", EMBED).status_code for _ in range(12)])
    assert runs[0] == runs[1]
    assert {500, 429, 200} == set(runs[0])


def test_timeout_fault_sleeps_then_answers_504(stub: StubServer) -> None:
    """A 'timeout' holds the request for timeout_seconds, then gives up with 504 and no charge."""
    stub.set_faults(script=["timeout"], timeout_seconds=0.3)
    started = time.monotonic()
    response = post(stub, "/embeddings", EMBED, key="k-slow")
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 504
    assert stub.charges()["total"] == 0


@pytest.mark.parametrize(
    "spec",
    [{"script": ["boom"]}, {"script": [99]}, {"rates": {"500": 0.7, "429": 0.7}}, {"latency": -1}, {"route": 3},
     {"duration": "soon"}],
)
def test_faults_endpoint_rejects_bad_spec(stub: StubServer, spec: dict[str, Any]) -> None:
    """A malformed fault plan is a 400, not a silently ignored setting."""
    response = httpx.post(f"{stub.root_url}/_stub/faults", json=spec)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_reset_clears_charges_calls_and_faults(stub: StubServer) -> None:
    """After reset the stub is as new."""
    stub.set_faults(script=[503])
    post(stub, "/embeddings", EMBED, key="k-r")
    post(stub, "/embeddings", EMBED, key="k-r")
    stub.reset()
    assert stub.charges() == {"total": 0, "by_key": {}, "by_route": {}}
    assert stub.calls() == []
    response = post(stub, "/embeddings", EMBED, key="k-r")
    assert response.status_code == 200
    assert "idempotent-replayed" not in response.headers


# --- auth ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("header", [None, "Bearer sk-wrong", f"Basic {STUB_API_KEY}", STUB_API_KEY])
def test_rejects_wrong_bearer_with_401(stub: StubServer, header: str | None) -> None:
    """Without the right Bearer key: 401 authentication_error, not charged, recorded as not authorized."""
    headers = {"Authorization": header} if header else {}
    response = httpx.post(f"{stub.base_url}/embeddings", json=EMBED, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{stub.base_url}/models", headers=headers).status_code == 401
    assert stub.charges()["total"] == 0
    assert [c["authorization_ok"] for c in stub.calls()] == [False]


def test_calls_never_include_authorization_value(stub: StubServer) -> None:
    """The call log keeps ids and bodies but never the bearer key."""
    post(stub, "/embeddings", EMBED, key="k-log", X_Client_Request_Id="cr-1")
    raw = httpx.get(f"{stub.root_url}/_stub/calls").text
    assert STUB_API_KEY not in raw
    [call] = stub.calls()
    assert call["idempotency_key"] == "k-log"
    assert call["client_request_id"] == "cr-1"
    assert call["authorization_ok"] is True
    assert call["body"] == EMBED
    assert call["status"] == 200
    assert call["request_id"].startswith("gw_")


def test_auth_can_be_turned_off() -> None:
    """api_key=None serves anyone (for local trials)."""
    with start_gateway_stub(api_key=None) as server:
        assert httpx.post(f"{server.base_url}/embeddings", json=EMBED).status_code == 200


# --- payloads -----------------------------------------------------------------------------------------
def test_embeddings_are_deterministic_per_model_and_text(stub: StubServer) -> None:
    """Same model and text, same unit vector of 8 floats; another text or model, another vector."""
    body = post(stub, "/embeddings", EMBED).json()
    again = post(stub, "/embeddings", {"model": "stub-embed", "input": "hello world"}).json()
    other_model = post(stub, "/embeddings", {"model": "other", "input": "hello world"}).json()
    assert body["object"] == "list"
    assert body["model"] == "stub-embed"
    assert [d["index"] for d in body["data"]] == [0, 1]
    vectors = [d["embedding"] for d in body["data"]]
    assert all(len(v) == 8 for v in vectors)
    assert abs(sum(x * x for x in vectors[0]) - 1.0) < 1e-4
    assert again["data"][0]["embedding"] == vectors[0]
    assert vectors[1] != vectors[0]
    assert other_model["data"][0]["embedding"] != vectors[0]
    assert body["usage"]["total_tokens"] > 0


def test_chat_replies_to_last_user_message(stub: StubServer) -> None:
    """The reply is a deterministic function of the last user message."""
    messages = [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "call me back"}]},
    ]
    body = post(stub, "/chat/completions", {"model": "stub-chat", "messages": messages}).json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Stub reply to: call me back"}
    assert post(stub, "/chat/completions", {"model": "stub-chat", "messages": "hi"}).status_code == 400


@pytest.mark.parametrize(
    "voice",
    [{"voice": "alloy"}, {"ref_audio": "https://x/ref.wav", "ref_text": "hello", "task_type": "Base"}],
)
def test_speech_returns_valid_wav(stub: StubServer, voice: dict[str, str]) -> None:
    """Speech is a real WAV file (mono, 16-bit) in either voice mode."""
    response = post(stub, "/audio/speech", {"model": "stub-tts", "input": "Thanks for calling"} | voice)
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(response.content)) as audio:
        assert audio.getnchannels() == 1
        assert audio.getsampwidth() == 2
        assert audio.getframerate() == 16_000
        assert audio.getnframes() > 0



def test_speech_is_the_same_tone_for_the_same_request_and_differs_by_text_and_voice(stub: StubServer) -> None:
    """The tone's pitch follows model, voice and text, its length the text: repeats give the same bytes."""
    def speak(text: str, voice: str) -> bytes:
        response = post(stub, "/audio/speech", {"model": "stub-tts", "input": text, "voice": voice})
        assert response.status_code == 200
        return response.content

    first = speak("Thanks for calling", "alloy")
    assert speak("Thanks for calling", "alloy") == first
    assert speak("Thanks for calling", "verse") != first
    longer = speak("Thanks for calling, we will get back to you", "alloy")
    with wave.open(io.BytesIO(first)) as short_audio, wave.open(io.BytesIO(longer)) as long_audio:
        assert long_audio.getnframes() > short_audio.getnframes()

@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"ref_audio": "https://x/ref.wav"},
        {"ref_audio": "a", "ref_text": "b"},
        {"voice": "alloy", "response_format": "mp3"},
    ],
)
def test_speech_without_voice_or_full_reference_is_400(stub: StubServer, extra: dict[str, str]) -> None:
    """Neither a voice nor the complete ref_audio + ref_text + task_type trio is a request error."""
    response = post(stub, "/audio/speech", {"model": "stub-tts", "input": "hi"} | extra)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_invalid_json_is_400(stub: StubServer) -> None:
    """A body that is not a JSON object is an invalid_request_error."""
    for raw in (b"{not json", b"[1, 2]"):
        response = httpx.post(f"{stub.base_url}/embeddings", content=raw, headers=AUTH)
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_models_lists_stub_models(stub: StubServer) -> None:
    """GET /v1/models answers the OpenAI list shape."""
    body = httpx.get(f"{stub.base_url}/models", headers=AUTH).json()
    assert body["object"] == "list"
    assert {"stub-embed", "stub-chat", "stub-tts"} <= {m["id"] for m in body["data"]}


def test_every_response_has_request_id(stub: StubServer) -> None:
    """Success, errors, unknown routes and the control API all carry x-request-id."""
    responses = [
        post(stub, "/embeddings", EMBED),
        httpx.post(f"{stub.base_url}/embeddings", json=EMBED),
        httpx.get(f"{stub.base_url}/nope", headers=AUTH),
        httpx.get(f"{stub.base_url}/embeddings", headers=AUTH),
        httpx.get(f"{stub.root_url}/_stub/charges"),
    ]
    assert [r.status_code for r in responses] == [200, 401, 404, 405, 200]
    assert all(r.headers["x-request-id"].startswith("gw_") for r in responses)
    assert responses[2].json()["error"]["type"] == "not_found_error"


def test_module_entry_point_serves_the_stub() -> None:
    """The emulator module run as a script serves the stub with the key it is given."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | {"PYTHONWARNINGS": "error"}
    args = [sys.executable, "-m", "runinfra_webhooks.service.devtools.gateway_stub", "--port", str(port),
            "--api-key", "sk-cli", "--latency", "0"]
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer sk-cli"})
                break
            except httpx.ConnectError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "stub did not start"
                time.sleep(0.05)
        assert response.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()
