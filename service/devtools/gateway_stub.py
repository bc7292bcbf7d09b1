"""A local OpenAI-compatible gateway emulator for tests and ``runinfra-webhooks dev`` / ``gateway-stub``.

Routes under ``/v1``: ``POST /embeddings``, ``POST /chat/completions``, ``POST /audio/speech`` (a real WAV),
``GET /models``. Answers are deterministic functions of the request. Bearer auth when an API key is set.

Idempotency (keyed by ``Idempotency-Key`` and route): the first request runs the work and records one
charge; the same key and body while it runs gets 409 ``idempotency_conflict``, afterwards the stored answer
with ``Idempotent-Replayed: true`` and no charge; the same key with another body gets 422
``idempotency_key_reused``. The work runs in a task the stub owns, so a client that disconnects (a worker
killed mid-call) still gets charged and can collect the stored answer on retry. Only 2xx answers are
stored and charged; a failed request frees its key. Requests without a key are charged every time.

Control API (no auth): ``GET /_stub/charges``, ``GET /_stub/calls``, ``POST /_stub/faults``,
``POST /_stub/reset``. Injected faults (scripted statuses or ``"timeout"``, random rates, latency) are
applied after auth and before idempotency, and are never charged; a plan with ``duration`` ends by itself
that many seconds after it was set ("503 to everything for 60 s"). See ``FaultPlan`` for the body. Every
call records when it arrived and was answered and how many calls of its route were in flight on arrival,
so limits can be measured where they matter: at the gateway.

Run alone: ``runinfra-webhooks gateway-stub --port 8090 [--latency 0.2] [--api-key sk-stub]``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import hmac
import io
import json
import math
import os
import sys
import time
import uuid
import wave
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runinfra_webhooks.service.devtools.gateway_stub_state import TIMEOUT, Fault, FaultPlan, StoredResponse, StubState
from runinfra_webhooks.service.tracing import setup_tracing

__all__ = ["create_stub_app", "main", "run_stub"]

JSON = "application/json"
MODELS = ("stub-embed", "stub-chat", "stub-tts")
_EMBEDDING_DIMENSIONS = 8
_SAMPLE_RATE = 16_000
_MAX_KEY_LENGTH = 255
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "unprocessable_entity_error",
    429: "rate_limit_error",
}

Builder = Callable[[dict[str, Any]], StoredResponse]


class _Invalid(Exception):
    """The request body fails validation: rendered as 400 ``invalid_request_error``."""


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _error(status: int, message: str, *, error_type: str | None = None, code: str | None = None) -> StoredResponse:
    kind = error_type or _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return StoredResponse(status, _json_bytes(body), JSON)


def _respond(stored: StoredResponse, headers: dict[str, str] | None = None) -> Response:
    all_headers = {"x-request-id": f"gw_{uuid.uuid4().hex}", **(headers or {})}
    return Response(stored.body, status_code=stored.status, media_type=stored.content_type, headers=all_headers)


# --- the inference work: pure functions of the request body --------------------------------------------
def _str_field(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        msg = f"'{name}' must be a non-empty string"
        raise _Invalid(msg)
    return value


def _embeddings_of(dimensions: int) -> Builder:
    """The embeddings builder: one unit vector of ``dimensions`` per input, a function of model and text only,
    so a text embedded again (a search for it) gets exactly its stored vector."""

    def build(payload: dict[str, Any]) -> StoredResponse:
        return _embeddings(payload, dimensions)

    return build


def _embeddings(payload: dict[str, Any], dimensions: int = _EMBEDDING_DIMENSIONS) -> StoredResponse:
    model = _str_field(payload, "model")
    texts = payload.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        msg = "'input' must be a non-empty string or a non-empty list of non-empty strings"
        raise _Invalid(msg)
    data = [{"object": "embedding", "index": i, "embedding": _vector(f"{model}\x00{t}", dimensions)}
            for i, t in enumerate(texts)]
    tokens = sum(len(t.split()) or 1 for t in texts)
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return StoredResponse(200, _json_bytes(body), JSON)


def _vector(text: str, dimensions: int = _EMBEDDING_DIMENSIONS) -> list[float]:
    # The default 8 dimensions come from SHA-256 as they always did; more need an extendable-output hash.
    digest = (hashlib.sha256(text.encode()).digest() if dimensions <= 16
              else hashlib.shake_256(text.encode()).digest(2 * dimensions))
    raw = [int.from_bytes(digest[i : i + 2], "big") / 32767.5 - 1.0 for i in range(0, 2 * dimensions, 2)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


def _chat(payload: dict[str, Any]) -> StoredResponse:
    model = _str_field(payload, "model")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        msg = "'messages' must be a non-empty list of message objects"
        raise _Invalid(msg)
    user_text = next((_content_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    reply = f"Stub reply to: {user_text}"
    prompt_tokens = sum(len(_content_text(m.get("content")).split()) for m in messages)
    completion_tokens = len(reply.split())
    body = {
        "id": "chatcmpl-" + hashlib.sha256(f"{model}\x00{user_text}".encode()).hexdigest()[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return StoredResponse(200, _json_bytes(body), JSON)


def _content_text(content: Any) -> str:
    """A message's text: a string, or the ``text`` parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _speech(payload: dict[str, Any]) -> StoredResponse:
    model = _str_field(payload, "model")
    text = _str_field(payload, "input")
    if payload.get("voice") is not None:
        voice = _str_field(payload, "voice")
    elif payload.get("ref_audio") is not None:
        voice = "\x00".join(_str_field(payload, name) for name in ("ref_audio", "ref_text", "task_type"))
    else:
        msg = "give either 'voice' or 'ref_audio' + 'ref_text' + 'task_type'"
        raise _Invalid(msg)
    response_format = payload.get("response_format", "wav")
    if response_format != "wav":
        msg = "the stub only produces 'wav'"
        raise _Invalid(msg)
    return StoredResponse(200, _wav(f"{model}\x00{voice}\x00{text}", len(text)), "audio/wav")


def _wav(seed: str, length: int) -> bytes:
    """A short mono 16-bit sine tone whose pitch depends on ``seed`` and duration on ``length``."""
    frequency = 220 + hashlib.sha256(seed.encode()).digest()[0]
    return _tone(frequency, int(_SAMPLE_RATE * min(1.0, 0.1 + 0.01 * length)))


# Synthesising a tone sample by sample costs the emulator ~1.5 ms of CPU per call; under a load test that
# queueing inside the emulator would add to the latency it was asked to model. There are 256 pitches and at
# most 16,000 frames, so the few tones a run uses are kept.
@functools.lru_cache(maxsize=64)
def _tone(frequency: int, frames: int) -> bytes:
    samples = array("h", (int(8000 * math.sin(2 * math.pi * frequency * i / _SAMPLE_RATE)) for i in range(frames)))
    if sys.byteorder == "big":
        samples.byteswap()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(_SAMPLE_RATE)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def _build(builder: Builder, raw: bytes) -> StoredResponse:
    try:
        payload = json.loads(raw)
    except ValueError:
        return _error(400, "the body is not valid JSON")
    if not isinstance(payload, dict):
        return _error(400, "the body must be a JSON object")
    try:
        return builder(payload)
    except _Invalid as exc:
        return _error(400, str(exc))


# --- the app -----------------------------------------------------------------------------------------
class _Stub:
    def __init__(self, api_key: str | None, state: StubState) -> None:
        self._authorization = f"Bearer {api_key}".encode() if api_key else None
        self.state = state

    def _authorized(self, request: Request) -> bool:
        if self._authorization is None:
            return True
        given = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(given, self._authorization)

    def inference(self, builder: Builder) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            raw = await request.body()
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            route = request.url.path
            in_flight = self.state.arrive(route)
            call: dict[str, Any] = {
                "route": route,
                "arrived": time.time(),  # Unix seconds: when the request (body included) was in
                "in_flight": in_flight,  # requests of this route being answered at that moment, this one included
                "answered": None,
                "idempotency_key": request.headers.get("idempotency-key"),
                "client_request_id": request.headers.get("x-client-request-id"),
                "authorization_ok": self._authorized(request),
                "replayed": False,
                "status": None,
                "fault": None,
                "request_id": None,
                "traceparent": request.headers.get("traceparent"),
                "body": body,
            }
            self.state.calls.append(call)
            try:
                response = await self._answer(request, builder, raw, call)
            finally:
                self.state.leave(route)
            call["answered"] = time.time()
            call["status"] = response.status_code
            call["request_id"] = response.headers["x-request-id"]
            return response

        return endpoint

    async def _answer(self, request: Request, builder: Builder, raw: bytes, call: dict[str, Any]) -> Response:
        route: str = call["route"]
        if not call["authorization_ok"]:
            return _respond(_error(401, "Incorrect API key provided.", code="invalid_api_key"))
        plan = self.state.plan_for(route)
        if plan is not None and (fault := plan.draw()) is not None:
            call["fault"] = fault
            return await self._fault(fault, plan)
        key: str | None = call["idempotency_key"]
        epoch = self.state.epoch
        if key is not None:
            if len(key) > _MAX_KEY_LENGTH:
                return _respond(_error(400, f"Idempotency-Key is longer than {_MAX_KEY_LENGTH} characters"))
            claim = self.state.claim(route, key, hashlib.sha256(raw).hexdigest())
            if claim == "reused":
                return _respond(
                    _error(422, "this Idempotency-Key was used with another body", error_type="idempotency_key_reused")
                )
            if claim == "in_flight":
                return _respond(
                    _error(409, "a request with this Idempotency-Key is in flight", error_type="idempotency_conflict")
                )
            if isinstance(claim, StoredResponse):
                call["replayed"] = True
                return _respond(claim, {"Idempotent-Replayed": "true"})
        task = self.state.spawn(self._work(route, key, epoch, builder, raw))
        return _respond(await asyncio.shield(task))

    async def _work(self, route: str, key: str | None, epoch: int, builder: Builder, raw: bytes) -> StoredResponse:
        stored: StoredResponse | None = None
        try:
            latency = self.state.latency_for(route)
            if latency:
                await asyncio.sleep(latency)
            stored = _build(builder, raw)
            return stored
        finally:
            self.state.complete(route, key, epoch, stored)

    async def _fault(self, fault: Fault, plan: FaultPlan) -> Response:
        if fault == TIMEOUT:
            await asyncio.sleep(plan.timeout_seconds)
            return _respond(_error(504, "injected timeout", code="timeout"))
        status = int(fault)
        headers: dict[str, str] = {}
        if status == 429 or plan.retry_after is not None:
            retry_after = plan.retry_after if plan.retry_after is not None else 1.0
            headers["Retry-After"] = str(math.ceil(retry_after))
        return _respond(_error(status, f"injected fault {status}", code="injected_fault"), headers)

    async def models(self, request: Request) -> Response:
        if not self._authorized(request):
            return _respond(_error(401, "Incorrect API key provided.", code="invalid_api_key"))
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "runinfra-stub"} for m in MODELS]
        return _respond(StoredResponse(200, _json_bytes({"object": "list", "data": data}), JSON))

    # --- control API ----------------------------------------------------------------------------------
    async def charges(self, request: Request) -> Response:
        return _respond(StoredResponse(200, _json_bytes(self.state.charges()), JSON))

    async def calls(self, request: Request) -> Response:
        return _respond(StoredResponse(200, _json_bytes(list(self.state.calls)), JSON))

    async def faults(self, request: Request) -> Response:
        try:
            route, plan = FaultPlan.parse(json.loads(await request.body()))
        except ValueError as exc:
            return _respond(_error(400, str(exc)))
        self.state.set_faults(route, plan)
        return _respond(StoredResponse(200, _json_bytes({"ok": True, "route": route}), JSON))

    async def reset(self, request: Request) -> Response:
        self.state.reset()
        return _respond(StoredResponse(200, _json_bytes({"ok": True}), JSON))


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _respond(_error(exc.status_code, exc.detail), dict(exc.headers or {}))


def create_stub_app(*, api_key: str | None = "sk-stub", latency: float = 0.0,
                    middleware: Sequence[Middleware] = (), dimensions: int = _EMBEDDING_DIMENSIONS) -> Starlette:
    """The stub as an ASGI app; ``api_key=None`` turns auth off, ``latency`` delays every inference,
    ``middleware`` wraps it (tracing's server spans, when the OTEL_* variables ask for them), ``dimensions``
    is the length of every embedding (1-4096)."""
    if not 1 <= dimensions <= 4096:
        msg = f"dimensions must be 1-4096, got {dimensions}"
        raise ValueError(msg)
    stub = _Stub(api_key, StubState(latency=latency))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await stub.state.cancel_tasks()

    routes = [
        Route("/v1/embeddings", stub.inference(_embeddings_of(dimensions)), methods=["POST"]),
        Route("/v1/chat/completions", stub.inference(_chat), methods=["POST"]),
        Route("/v1/audio/speech", stub.inference(_speech), methods=["POST"]),
        Route("/v1/models", stub.models, methods=["GET"]),
        Route("/_stub/charges", stub.charges, methods=["GET"]),
        Route("/_stub/calls", stub.calls, methods=["GET"]),
        Route("/_stub/faults", stub.faults, methods=["POST"]),
        Route("/_stub/reset", stub.reset, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_exception}, lifespan=lifespan,
                     middleware=list(middleware))


def run_stub(host: str, port: int, *, api_key: str | None, latency: float,
             dimensions: int = _EMBEDDING_DIMENSIONS) -> None:
    """Serve the stub with uvicorn until interrupted; traced like the service when OTEL_* asks for it."""
    tracing = setup_tracing("gateway-stub", os.environ)
    uvicorn.run(
        create_stub_app(api_key=api_key, latency=latency, middleware=tracing.middleware(), dimensions=dimensions),
        host=host,
        port=port,
        ws="none",
        timeout_graceful_shutdown=2,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m runinfra_webhooks.service.devtools.gateway_stub",
        description="Local OpenAI-compatible gateway emulator."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each inference takes")
    parser.add_argument("--api-key", default="sk-stub", help="expected bearer key; empty turns auth off")
    parser.add_argument("--dimensions", type=int, default=_EMBEDDING_DIMENSIONS, help="length of every embedding")
    args = parser.parse_args(argv)
    run_stub(args.host, args.port, api_key=args.api_key or None, latency=args.latency, dimensions=args.dimensions)


if __name__ == "__main__":
    main()
