"""An alert endpoint for tests: records every POST (body and headers) and can be told to be down."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runinfra_webhooks.service.core.signature import Outcome, verify
from tests.servers import serve_in_thread

ALERT_SECRET = "whsec_alerts_test"


@dataclass
class AlertSink:
    secret: str
    url: str = ""
    down: bool = False  # answer 503 to everything
    posts: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)  # every POST, refused ones too
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted(self) -> list[dict[str, Any]]:
        """The bodies of the POSTs answered 2xx, in arrival order (the same alert twice if it came twice)."""
        with self._lock:
            return [json.loads(body) for body, headers in self.posts if headers.get("x-sink-accepted") == "1"]

    def verified(self, body: bytes, headers: dict[str, str]) -> bool:
        """The alert's signature checks out under the sink's secret, like any RunInfra delivery."""
        outcome = verify(headers.get("runinfra-signature"), body, [self.secret.encode()], 300, int(time.time()))
        return outcome.outcome is Outcome.OK

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        with self._lock:
            status = 503 if self.down else 200 if self.verified(body, headers) else 401
            if status == 200:
                headers["x-sink-accepted"] = "1"
            self.posts.append((body, headers))
        return Response(status_code=status)


@contextlib.contextmanager
def alert_sink(secret: str = ALERT_SECRET) -> Iterator[AlertSink]:
    sink = AlertSink(secret)
    app = Starlette(routes=[Route("/alerts", sink.endpoint, methods=["POST"])])
    with serve_in_thread(app) as base:
        sink.url = base + "/alerts"
        yield sink
