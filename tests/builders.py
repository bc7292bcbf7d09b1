"""Signed deliveries: build a valid one, with any part overridable, and post it to a receiver."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from runinfra_webhooks.service.core.signature import sign

SECRET = "whsec_test_primary_0123456789"
OLD_SECRET = "whsec_test_previous_9876543210"
WEBHOOK_PATH = "/webhooks/runinfra"
EVENTS_DIR = Path(__file__).parents[1] / "service" / "devtools" / "examples"  # the examples `send` ships


def example_event(type_: str = "deployment.ready", **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS_DIR / f"{type_}.json").read_text())
    event["id"] = f"evt_{uuid.uuid4().hex[:16]}"
    event.update(overrides)
    return event


def signed_delivery(
    event: dict[str, Any] | None = None,
    *,
    body: bytes | None = None,
    secret: str = SECRET,
    timestamp: int | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of a delivery signed like RunInfra signs it."""
    raw = body if body is not None else json.dumps(event or example_event()).encode()
    ts = int(time.time()) if timestamp is None else timestamp
    h = {"content-type": "application/json", "runinfra-signature": sign(raw, secret, ts)}
    h.update(headers or {})
    return raw, h


def post_delivery(receiver_url: str, body: bytes, headers: dict[str, str], *, timeout: float = 30) -> httpx.Response:
    """POST a delivery to the receiver's webhook route, as RunInfra does: ``post_delivery(url, *signed_delivery())``."""
    return httpx.post(receiver_url + WEBHOOK_PATH, content=body, headers=headers, timeout=timeout)
