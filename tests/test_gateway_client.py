"""GatewayClient against the gateway stub over real HTTP: headers, retries, typed errors, no leaked key."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import structlog

from runinfra_webhooks.service.gateway.client import (
    GatewayClient,
    GatewayError,
    GatewayPermanentError,
    GatewayResponse,
    GatewayTransientError,
    idempotency_key,
)
from runinfra_webhooks.service.settings import Settings
from tests.stubserver import STUB_API_KEY, StubServer, start_gateway_stub

EMBED = {"model": "stub-embed", "input": ["a", "b"]}
KEY = idempotency_key("evt_1", "embed", 0, 0)

MakeClient = Callable[..., GatewayClient]


@pytest.fixture
def waits() -> list[float]:
    """The delays the client asked to sleep, recorded by the fake ``sleep``."""
    return []


@pytest.fixture
async def make_client(stub: StubServer, waits: list[float]) -> AsyncIterator[MakeClient]:
    """Build clients against the stub with a recording, non-sleeping ``sleep``; closes them afterwards."""
    clients: list[GatewayClient] = []

    async def record(delay: float) -> None:
        waits.append(delay)

    def make(**overrides: Any) -> GatewayClient:
        options: dict[str, Any] = {
            "base_url": stub.base_url,
            "api_key": STUB_API_KEY,
            "timeout": 5.0,
            "max_connections": 4,
            "max_attempts": 4,
            "retry_base": 0.5,
            "retry_cap": 60.0,
            "sleep": record,
        } | overrides
        client = GatewayClient(options.pop("base_url"), options.pop("api_key"), **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


# --- idempotency keys ---------------------------------------------------------------------------------
def test_idempotency_key_is_deterministic_and_bounded() -> None:
    """The same logical call always gets the same short key."""
    key = idempotency_key("evt_1", "embed", 3, 0)
    assert key == idempotency_key("evt_1", "embed", 3, 0)
    assert key == idempotency_key("evt_1", "embed", "3", 0)
    assert re.fullmatch(r"rwh_[0-9a-f]{48}", key)
    assert len(idempotency_key("e" * 255, "s" * 100, "p" * 100, 10**9)) <= 255


@pytest.mark.parametrize(
    "other",
    [("evt_2", "embed", 3, 0), ("evt_1", "speech", 3, 0), ("evt_1", "embed", 4, 0), ("evt_1", "embed", 3, 1)],
)
def test_idempotency_key_differs_across_event_step_part_generation(other: tuple[str, str, int, int]) -> None:
    """Each of the four fields changes the key."""
    assert idempotency_key(*other) != idempotency_key("evt_1", "embed", 3, 0)


def test_idempotency_key_fields_cannot_be_spliced() -> None:
    """A field containing the separator is refused, so two different calls cannot share a key."""
    with pytest.raises(ValueError, match="separator"):
        idempotency_key("evt\x1fembed", "0", 0, 0)
    with pytest.raises(ValueError, match="generation"):
        idempotency_key("evt", "embed", 0, -1)


# --- success path -------------------------------------------------------------------------------------
async def test_post_sends_bearer_idempotency_key_and_client_request_id(
    stub: StubServer, make_client: MakeClient
) -> None:
    """Each call carries the key in Authorization, the Idempotency-Key, a UUID X-Client-Request-Id, JSON."""
    response = await make_client().post("/embeddings", EMBED, idempotency_key=KEY)
    assert response.status == 200
    assert response.content_type == "application/json"
    assert response.request_id is not None and response.request_id.startswith("gw_")
    assert response.replayed is False
    assert len(response.json()["data"]) == 2
    [call] = stub.calls()
    assert call["authorization_ok"] is True
    assert call["idempotency_key"] == KEY
    assert uuid.UUID(call["client_request_id"]).version == 4
    assert call["body"] == EMBED


async def test_post_retries_503_and_429_then_succeeds_with_one_charge(
    stub: StubServer, make_client: MakeClient, waits: list[float]
) -> None:
    """Transient answers are retried with the same key and a new client request id; the gateway charges once."""
    stub.set_faults(script=[503, 429, 200])
    response = await make_client().post("/embeddings", EMBED, idempotency_key=KEY)
    assert response.status == 200
    calls = stub.calls()
    assert [c["status"] for c in calls] == [503, 429, 200]
    assert {c["idempotency_key"] for c in calls} == {KEY}
    assert len({c["client_request_id"] for c in calls}) == 3
    assert len(waits) == 2
    assert stub.charges() == {"total": 1, "by_key": {KEY: 1}, "by_route": {"/v1/embeddings": 1}}


async def test_post_flags_replayed_response(stub: StubServer, make_client: MakeClient) -> None:
    """A second call with the same key gets the gateway's stored answer, flagged, without a new charge."""
    client = make_client()
    first = await client.post("/embeddings", EMBED, idempotency_key=KEY)
    second = await client.post("/embeddings", EMBED, idempotency_key=KEY)
    assert (first.replayed, second.replayed) == (False, True)
    assert second.content == first.content
    assert stub.charges()["total"] == 1


async def test_concurrent_duplicate_call_waits_out_409_and_gets_the_replay(stub: StubServer) -> None:
    """Two workers running one logical call at once: the second retries the 409 and both get one charge."""
    stub.set_faults(latency=0.3)

    async def short_sleep(delay: float) -> None:
        await asyncio.sleep(0.1)

    client = GatewayClient(
        stub.base_url, STUB_API_KEY, timeout=5, max_connections=4, max_attempts=10,
        retry_base=0.1, retry_cap=1.0, sleep=short_sleep,
    )  # fmt: skip
    try:
        results = await asyncio.gather(*(client.post("/embeddings", EMBED, idempotency_key=KEY) for _ in range(2)))
    finally:
        await client.aclose()
    assert sorted(r.replayed for r in results) == [False, True]
    assert 409 in [c["status"] for c in stub.calls()]
    assert stub.charges()["by_key"] == {KEY: 1}


async def test_speech_response_keeps_binary_body_and_content_type(make_client: MakeClient) -> None:
    """Non-JSON answers come back as bytes with their content type."""
    body = {"model": "stub-tts", "input": "hello", "voice": "alloy"}
    response = await make_client().post("/audio/speech", body, idempotency_key=KEY)
    assert response.content_type == "audio/wav"
    assert response.content.startswith(b"RIFF")
    with pytest.raises(GatewayPermanentError) as caught:
        response.json()
    assert caught.value.code == "gateway_invalid_response"


# --- failures -----------------------------------------------------------------------------------------
async def test_400_raises_permanent_error_with_type_and_request_id_without_retry(
    stub: StubServer, make_client: MakeClient, waits: list[float]
) -> None:
    """A request the gateway rejects is not retried; the error carries the gateway's type and request id."""
    with pytest.raises(GatewayPermanentError) as caught:
        await make_client().post("/embeddings", {"model": "stub-embed"}, idempotency_key=KEY)
    error = caught.value
    assert error.status == 400
    assert error.code == "gateway_bad_request"
    assert error.error_type == "invalid_request_error"
    [call] = stub.calls()
    assert error.request_id == call["request_id"]
    assert error.retry_after is None
    assert waits == []
    assert "\n" not in str(error) and "input" in str(error)


@pytest.mark.parametrize(("status", "code"), [(401, "gateway_unauthorized"), (404, "gateway_not_found"),
                                              (413, "gateway_payload_too_large"), (422, "gateway_unprocessable"),
                                              (418, "gateway_rejected")])  # fmt: skip
async def test_client_errors_are_permanent(stub: StubServer, make_client: MakeClient, status: int, code: str) -> None:
    """Every 4xx other than 408, 409 and 429 is permanent and tried once."""
    stub.set_faults(script=[status])
    with pytest.raises(GatewayPermanentError) as caught:
        await make_client().post("/embeddings", EMBED, idempotency_key=KEY)
    assert (caught.value.status, caught.value.code) == (status, code)
    assert len(stub.calls()) == 1


async def test_wrong_api_key_is_permanent_401(stub: StubServer, make_client: MakeClient) -> None:
    """The stub's real auth check yields a permanent authentication_error."""
    with pytest.raises(GatewayPermanentError) as caught:
        await make_client(api_key="sk-not-the-key").post("/embeddings", EMBED, idempotency_key=KEY)
    assert caught.value.status == 401
    assert caught.value.error_type == "authentication_error"


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
async def test_exhausted_attempts_raise_transient_error_with_retry_after(
    stub: StubServer, make_client: MakeClient, waits: list[float], status: int
) -> None:
    """After max_attempts transient answers the job layer gets a transient error telling it when to retry."""
    stub.set_faults(script=[status] * 5)
    with pytest.raises(GatewayTransientError) as caught:
        await make_client(max_attempts=3).post("/embeddings", EMBED, idempotency_key=KEY)
    assert caught.value.status == status
    assert caught.value.request_id is not None
    assert caught.value.retry_after is not None and 0 <= caught.value.retry_after <= 60
    assert len(stub.calls()) == 3
    assert len(waits) == 2
    assert stub.charges()["total"] == 0


async def test_retry_after_is_honoured_for_the_inline_wait(
    stub: StubServer, make_client: MakeClient, waits: list[float]
) -> None:
    """The client waits exactly what Retry-After says instead of a jittered delay."""
    stub.set_faults(script=[429, 503, 200], retry_after=3)
    await make_client().post("/embeddings", EMBED, idempotency_key=KEY)
    assert waits == [3.0, 3.0]


async def test_long_retry_after_defers_the_job_instead_of_waiting(
    stub: StubServer, make_client: MakeClient, waits: list[float]
) -> None:
    """A wait longer than max_inline_wait is handed to the job layer at once, as retry_after."""
    stub.set_faults(script=[429], retry_after=30)
    with pytest.raises(GatewayTransientError) as caught:
        await make_client(max_inline_wait=5.0).post("/embeddings", EMBED, idempotency_key=KEY)
    assert caught.value.retry_after == 30.0
    assert caught.value.code == "gateway_rate_limited"
    assert waits == []
    assert len(stub.calls()) == 1


async def test_timeout_is_transient(stub: StubServer, make_client: MakeClient) -> None:
    """A gateway that does not answer within the timeout is a transient gateway_timeout."""
    stub.set_faults(script=["timeout"], timeout_seconds=1.0)
    with pytest.raises(GatewayTransientError) as caught:
        await make_client(timeout=0.2, max_attempts=1).post("/embeddings", EMBED, idempotency_key=KEY)
    assert caught.value.code == "gateway_timeout"
    assert caught.value.status is None


async def test_connection_refused_is_transient(make_client: MakeClient, waits: list[float]) -> None:
    """Nobody listening is a transient gateway_unreachable, retried up to max_attempts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = make_client(base_url=f"http://127.0.0.1:{port}/v1", max_attempts=3)
    with pytest.raises(GatewayTransientError) as caught:
        await client.post("/embeddings", EMBED, idempotency_key=KEY)
    assert caught.value.code == "gateway_unreachable"
    assert len(waits) == 2


# --- observability and secrets ------------------------------------------------------------------------
async def test_every_call_is_logged_and_reported_with_request_id(stub: StubServer, make_client: MakeClient) -> None:
    """Each HTTP attempt logs gateway.call with its request id and hands the outcome to on_call."""
    stub.set_faults(script=[503, 200])
    seen: list[tuple[str, GatewayResponse | GatewayError]] = []
    client = make_client(on_call=lambda route, outcome: seen.append((route, outcome)))
    with structlog.testing.capture_logs() as logs:
        response = await client.post("/embeddings", EMBED, idempotency_key=KEY)
    request_ids = [c["request_id"] for c in stub.calls()]
    assert [(e["event"], e["route"], e["status"], e["attempt"]) for e in logs] == [
        ("gateway.call", "/embeddings", 503, 1),
        ("gateway.call", "/embeddings", 200, 2),
    ]
    assert [e["request_id"] for e in logs] == request_ids
    assert all(e["idempotency_key"] == KEY and e["replayed"] is False for e in logs)
    assert [route for route, _ in seen] == ["/embeddings", "/embeddings"]
    assert isinstance(seen[0][1], GatewayTransientError) and seen[0][1].request_id == request_ids[0]
    assert seen[1][1] is response


async def test_api_key_never_appears_in_errors_or_logs(stub: StubServer, make_client: MakeClient) -> None:
    """Not in str/repr of any error, not in any log event, even when the gateway echoes the key back."""
    secret = "sk-live-5f2b9c0d7e"

    def echo_key(request: httpx.Request) -> httpx.Response:
        message = f"Incorrect API key provided: {request.headers['authorization'].removeprefix('Bearer ')}"
        body = {"error": {"type": "invalid_request_error", "message": message, "code": "invalid_api_key"}}
        return httpx.Response(401, json=body, headers={"x-request-id": "req_1"})

    errors: list[GatewayError] = []
    with structlog.testing.capture_logs() as logs:
        for client in (
            make_client(api_key=secret, transport=httpx.MockTransport(echo_key)),
            make_client(api_key=secret),  # the stub: 401 for a wrong key
            make_client(api_key=secret, base_url="http://127.0.0.1:9/v1", max_attempts=2),
        ):
            with pytest.raises(GatewayError) as caught:
                await client.post("/embeddings", EMBED, idempotency_key=KEY)
            errors.append(caught.value)
    assert [type(e) for e in errors] == [GatewayPermanentError, GatewayPermanentError, GatewayTransientError]
    assert "[redacted]" in str(errors[0])
    for error in errors:
        assert secret not in str(error) and secret not in repr(error)
        assert "\n" not in str(error)
    assert logs and secret not in json.dumps(logs, default=str)
    assert all("authorization" not in {k.lower() for k in e} for e in logs)


def test_missing_api_key_is_a_typed_error() -> None:
    """Building a client without RUNINFRA_API_KEY fails with code api_key_missing, before any call."""
    settings = Settings(RUNINFRA_WEBHOOK_SECRET="whsec_test", RUNINFRA_API_KEY=None)
    with pytest.raises(GatewayPermanentError) as caught:
        GatewayClient.from_settings(settings)
    assert caught.value.code == "api_key_missing"


async def test_from_settings_uses_base_url_key_and_limits(stub: StubServer) -> None:
    """from_settings wires base URL and key from Settings: a call against the stub authenticates."""
    settings = Settings(
        RUNINFRA_WEBHOOK_SECRET="whsec_test", RUNINFRA_API_KEY=STUB_API_KEY, RUNINFRA_BASE_URL=stub.base_url
    )
    client = GatewayClient.from_settings(settings)
    try:
        response = await client.post("/embeddings", EMBED, idempotency_key=KEY)
    finally:
        await client.aclose()
    assert response.status == 200
    assert stub.calls()[0]["authorization_ok"] is True


@pytest.mark.parametrize("max_connections", [1, 20, 50])
async def test_concurrent_calls_use_every_connection_and_never_more(max_connections: int) -> None:
    """The client spreads calls over several small connection pools: together they hold exactly
    ``max_connections`` calls in flight at the gateway, never more, and every call is answered."""
    with start_gateway_stub(latency=0.2) as stub:  # its own: no call of another test still in flight there
        client = GatewayClient(stub.base_url, STUB_API_KEY, timeout=5.0, max_connections=max_connections,
                               max_attempts=1, retry_base=0.5, retry_cap=60.0)
        try:
            calls = 3 * max_connections
            responses = await asyncio.gather(*(
                client.post("/embeddings", EMBED, idempotency_key=f"{KEY}-{i}") for i in range(calls)))
        finally:
            await client.aclose()
        assert all(r.status == 200 for r in responses)
        seen = [c for c in stub.calls() if c["route"] == "/v1/embeddings"]
        assert len(seen) == calls
        assert max(c["in_flight"] for c in seen) == max_connections
