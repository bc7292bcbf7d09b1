"""Run the gateway stub on a real socket for tests: ``with start_gateway_stub() as stub: stub.base_url``.

The server is a uvicorn ``Server`` in a background thread on a free port (``tests.servers``). Other test
modules take the ``stub`` fixture (``tests/conftest.py``: one per module, reset for each test); a test that
needs one of its own (a slow one, or one without a key) starts it::

    with start_gateway_stub(latency=2.0) as slow:
        ...
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from runinfra_webhooks.service.devtools.gateway_stub import create_stub_app
from tests.servers import serve_in_thread

__all__ = ["StubServer", "start_gateway_stub"]

STUB_API_KEY = "sk-stub"


@dataclass(frozen=True)
class StubServer:
    """A running stub: ``base_url`` ends in ``/v1`` (what ``RUNINFRA_BASE_URL`` would be)."""

    root_url: str
    api_key: str | None

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, f"{self.root_url}/_stub/{path}", json=body, timeout=5)
        response.raise_for_status()
        return response.json()

    def charges(self) -> dict[str, Any]:
        result: dict[str, Any] = self._control("GET", "charges")
        return result

    def calls(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._control("GET", "calls")
        return result

    def set_faults(self, **spec: Any) -> None:
        """``set_faults(route="/v1/embeddings", script=[503, 200], retry_after=1, latency=0.2, ...)``."""
        self._control("POST", "faults", spec)

    def reset(self) -> None:
        self._control("POST", "reset")

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> None:
        """Poll ``predicate(self)`` until true; fail the test after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"stub condition not met within {timeout} s")
            time.sleep(0.02)


@contextmanager
def start_gateway_stub(*, latency: float = 0.0, api_key: str | None = STUB_API_KEY) -> Iterator[StubServer]:
    """Serve ``create_stub_app(api_key=..., latency=...)`` on 127.0.0.1:<free port> until the block ends."""
    app = create_stub_app(api_key=api_key, latency=latency)
    with serve_in_thread(app, ws="none", timeout_graceful_shutdown=1) as root_url:
        yield StubServer(root_url=root_url, api_key=api_key)
