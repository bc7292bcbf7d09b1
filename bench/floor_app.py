"""The floor of the webhook path on this stack (bench only, never deployed).

    python -m bench.floor_app --port P --variant full|no-log|no-redis-no-log

A plain ASGI app doing only what the contract cannot do without, the cheapest way we know: read the body,
check the signature (``service.signature``), ``json.loads`` it and check the envelope's four fields by
hand, run the real ``Ingestor`` (one coalesced EVALSHA, as the receiver does), log one structlog line
configured like the receiver's, answer 202 with a request id. No Starlette, no pydantic, no metrics, no
middleware, no error handling: a bad request crashes its task. If this cannot reach half the bare
endpoint's rate, no receiver built on uvicorn + redis-py + structlog in CPython can.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import structlog
import uvicorn

from runinfra_webhooks.service.core import signature
from runinfra_webhooks.service.logs import configure_logging
from runinfra_webhooks.service.receiver.request_id import _new_id
from runinfra_webhooks.service.settings import load_settings
from runinfra_webhooks.service.storage.connection import connect
from runinfra_webhooks.service.storage.ingest import Delivery, Ingestor, IngestOutcome

_HEADER = b"runinfra-signature"


def build(variant: str) -> Any:
    settings = load_settings()
    configure_logging(settings.log_level)
    log = structlog.get_logger("service.receiver")
    secrets = settings.secret_values()
    ingestors: list[Ingestor] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                ingestors.append(Ingestor(
                    connect(settings.redis_url), dedup_ttl=settings.dedup_ttl,
                    event_retention=settings.event_retention,
                    dead_letter_retention=settings.dead_letter_retention, job_expiry_s=settings.lost_deadline))
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        rid = _new_id()
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        header = next(v for n, v in scope["headers"] if n == _HEADER)
        now_ms = time.time_ns() // 1_000_000
        checked = signature.verify(header.decode("latin-1"), body, secrets, settings.tolerance, now_ms // 1000)
        assert checked.outcome is signature.Outcome.OK
        event = json.loads(body)
        event_id, type_, created = event["id"], event["type"], event["created"]
        assert isinstance(event_id, str) and isinstance(type_, str) and isinstance(created, int)
        assert isinstance(event["data"], dict)
        outcome = IngestOutcome.QUEUED
        if variant != "no-redis-no-log":
            outcome = await ingestors[0].ingest(Delivery(
                wanted=IngestOutcome.QUEUED, event_id=event_id, type=type_, created=created, header=header,
                body=body, request_id=rid, secret_index=checked.secret_index or 0, received_ms=now_ms))
        if variant == "full":
            log.info("webhook.received", request_id=rid, event_id=event_id, type=type_, outcome=outcome.value,
                     secret_index=checked.secret_index)
        content = json.dumps({"status": outcome.value, "event_id": event_id}).encode()
        await send({"type": "http.response.start", "status": 202, "headers": [
            (b"content-length", str(len(content)).encode()), (b"content-type", b"application/json"),
            (b"x-request-id", rid.encode())]})
        await send({"type": "http.response.body", "body": content})

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--variant", choices=["full", "no-log", "no-redis-no-log"], required=True)
    a = p.parse_args()
    uvicorn.run(build(a.variant), host="127.0.0.1", port=a.port, access_log=False, log_config=None,
                timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()
