"""Run the gateway stub on a real socket for tests: ``with start_gateway_stub() as stub: stub.base_url``.

The server is a uvicorn ``Server`` in a background thread, bound to a free port chosen by the OS (the
socket is handed to uvicorn, so there is no race for the port). Other test modules use it as::

    from tests.stubserver import StubServer, start_gateway_stub

    @pytest.fixture(scope="module")
    def gateway_stub() -> Iterator[StubServer]:
        with start_gateway_stub() as stub:
            yield stub
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from runinfra_webhooks.service.devtools.gateway_stub import create_stub_app

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
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_stub_app(api_key=api_key, latency=latency),
        log_level="warning",
        ws="none",
        lifespan="on",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway stub did not start")
            time.sleep(0.01)
        yield StubServer(root_url=f"http://127.0.0.1:{port}", api_key=api_key)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
