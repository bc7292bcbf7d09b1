"""POST /webhooks/runinfra: limit, verify, parse, ingest, answer.

The order is the security argument: the body is bounded before any HMAC, the signature is checked before
any JSON is parsed, and nothing is acknowledged before the one atomic Redis write returned.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from runinfra_webhooks.service.core import signature
from runinfra_webhooks.service.core.events import (
    CATALOGUE,
    Envelope,
    InvalidJSON,
    parse_envelope,
    parse_event,
    parse_event_json,
    parse_json_object,
)
from runinfra_webhooks.service.receiver.body import read_limited_body
from runinfra_webhooks.service.receiver.metrics import ReceiverMetrics
from runinfra_webhooks.service.receiver.problems import (
    IngestFailed,
    InvalidEvent,
    InvalidJSONBody,
    Problem,
    SignatureRejected,
    Unavailable,
    problem_response,
)
from runinfra_webhooks.service.receiver.request_id import assign_request_id, request_id_of
from runinfra_webhooks.service.settings import ReceiverSettings
from runinfra_webhooks.service.storage.connection import STORAGE_ERRORS
from runinfra_webhooks.service.storage.ingest import Delivery, Ingestor, IngestOutcome
from runinfra_webhooks.service.storage.redis_errors import classify

__all__ = ["PATH", "Receiver", "WebhookRoute"]

log = structlog.get_logger("service.receiver")
PATH = "/webhooks/runinfra"
_HEADER = b"runinfra-signature"
_STATUS = {
    IngestOutcome.QUEUED: 202,
    IngestOutcome.DEAD_LETTERED: 202,
    IngestOutcome.DUPLICATE: 200,
    IngestOutcome.IGNORED: 200,
}


def _raw_header(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == _HEADER:
            return bytes(value)
    return None


def _envelope_detail(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def _fits(models: tuple[type[BaseModel], ...], data: dict[str, Any]) -> bool:
    for model in models:
        try:
            model.model_validate(data)
        except ValidationError:
            return False
    return True


@dataclass
class Receiver:
    settings: ReceiverSettings
    ingestor: Ingestor
    metrics: ReceiverMetrics
    secrets: tuple[bytes, ...]
    # Types outside the catalogue that some handler takes, with the models their data must fit.
    extra_types: Mapping[str, tuple[type[BaseModel], ...]] = field(default_factory=dict)
    # The current span's traceparent when tracing is on (stored with the record), else None: no cost.
    traceparent: Callable[[], str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The webhook as one plain ASGI app: request id, answer, and refusals rendered as problem documents
        here, with no Request or Response objects on the path every delivery takes."""
        rid = assign_request_id(scope)
        started = time.perf_counter()
        try:
            status, content = await self._handle(scope, receive)
        except Problem as problem:
            response = problem_response(problem, rid)
            response.headers["x-request-id"] = rid
            await response(scope, receive, send)
            return
        finally:
            self.metrics.latency.observe(time.perf_counter() - started)
        # The headers Starlette's JSONResponse would send, and the request id.
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-length", str(len(content)).encode()), (b"content-type", b"application/json"),
            (b"x-request-id", rid.encode())]})
        await send({"type": "http.response.body", "body": content})

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        s = self.settings
        rid = request_id_of(scope)
        body = await read_limited_body(scope, receive, limit=s.max_body, timeout=s.body_timeout)
        raw_header = _raw_header(scope)
        header = raw_header.decode("latin-1") if raw_header is not None else None
        now_ms = time.time_ns() // 1_000_000
        result = signature.verify(header, body, self.secrets, s.tolerance, now_ms // 1000)
        if result.outcome is not signature.Outcome.OK or result.secret_index is None:
            self.metrics.delivered(result.outcome.value)
            log.info("webhook.rejected", request_id=rid, outcome=result.outcome.value)
            raise SignatureRejected(f"signature check failed: {result.outcome.value}", code=result.outcome.value)

        def delivery(wanted: IngestOutcome, event_id: str = "", type_: str = "", created: int = 0,
                     reason: str = "") -> Delivery:
            return Delivery(
                wanted=wanted, event_id=event_id, type=type_, created=created, header=raw_header or b"",
                body=body, request_id=rid, secret_index=result.secret_index or 0, received_ms=now_ms,
                reason=reason, traceparent=self.traceparent() if self.traceparent is not None else "",
            )

        # A valid catalogued event (the common case) is parsed and validated in one step from the bytes; a
        # valid typed event is a valid envelope too (each model extends Envelope).
        envelope: Envelope | None = parse_event_json(body)
        if envelope is not None:
            wanted, reason = IngestOutcome.QUEUED, ""
        else:
            envelope, wanted, reason = await self._decide(body, delivery)
        outcome = await self._ingest(delivery(wanted, envelope.id, envelope.type, envelope.created, reason))
        self.metrics.delivered(outcome.value)
        if outcome is IngestOutcome.DUPLICATE:
            self.metrics.duplicates.inc()
        log.info("webhook.received", request_id=rid, event_id=envelope.id, type=envelope.type,
                 outcome=outcome.value, secret_index=result.secret_index)
        answer: dict[str, str] = {"status": outcome.value, "event_id": envelope.id}
        if outcome is IngestOutcome.DEAD_LETTERED:
            answer["reason"] = reason
        return _STATUS[outcome], orjson.dumps(answer)

    async def _decide(self, body: bytes, delivery: Callable[[IngestOutcome], Delivery]
                      ) -> tuple[Envelope, IngestOutcome, str]:
        """The careful path for every other body: invalid JSON, an invalid envelope (both recorded, then
        refused), a catalogued type whose data does not fit (dead-lettered), a type outside the catalogue
        (queued when a handler takes it and its data fits every declared model, else ignored)."""
        try:
            obj = parse_json_object(body)
        except InvalidJSON as exc:
            await self._ingest(delivery(IngestOutcome.INVALID_JSON))
            raise InvalidJSONBody(str(exc)) from None
        type_ = obj.get("type")
        if isinstance(type_, str) and type_ in CATALOGUE:
            with contextlib.suppress(ValidationError):
                return parse_event(obj), IngestOutcome.QUEUED, ""
        try:
            envelope = parse_envelope(obj)
        except ValidationError as exc:
            await self._ingest(delivery(IngestOutcome.INVALID_EVENT))
            raise InvalidEvent(_envelope_detail(exc)) from None
        if envelope.type in CATALOGUE:  # its typed model refused the data
            wanted = IngestOutcome.DEAD_LETTERED
        elif envelope.type not in self.extra_types:
            wanted = IngestOutcome.IGNORED
        elif _fits(self.extra_types[envelope.type], envelope.data):
            wanted = IngestOutcome.QUEUED  # a type outside the catalogue that a team's own handler takes
        else:
            wanted = IngestOutcome.DEAD_LETTERED
        return envelope, wanted, "invalid_payload" if wanted is IngestOutcome.DEAD_LETTERED else ""

    async def _ingest(self, d: Delivery) -> IngestOutcome:
        try:
            return await self.ingestor.ingest(d)
        except STORAGE_ERRORS as exc:
            self.metrics.redis_errors.inc()
            failure = classify(exc)
            if failure is not None and not failure.transient:
                self.metrics.delivered("ingest_failed")
                log.error("webhook.ingest_refused", request_id=d.request_id, event_id=d.event_id,
                          code=failure.code, error=failure.detail)
                raise IngestFailed(f"the ingest script refused the delivery ({failure.code})") from None
            self.metrics.delivered("unavailable")
            log.warning("webhook.storage_failed", request_id=d.request_id, event_id=d.event_id,
                        error=type(exc).__name__, code=failure.code if failure is not None else "")
            raise Unavailable("Redis did not accept the delivery; retry later",
                              headers={"Retry-After": "5"}) from None


class WebhookRoute:
    """``POST /webhooks/runinfra`` answered by the receiver ahead of Starlette's router, exception and
    request-id middleware (the receiver does those jobs itself); every other request goes on to the app.
    Installed inside the app's own middleware, so tracing still wraps each delivery."""

    def __init__(self, app: ASGIApp, *, receiver: Receiver) -> None:
        self.app = app
        self.receiver = receiver

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == PATH:
            await self.receiver(scope, receive, send)
        else:
            await self.app(scope, receive, send)
