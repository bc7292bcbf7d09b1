"""A/B of the HTTP protocol alone, in one process: uvicorn's stock httptools protocol against the
receiver's bounded one (``service.receiver.edge``), with no network, no Redis and a trivial ASGI app.

    .venv/bin/python -m bench.protocol_ab [--requests 5000] [--repeats 30]

Each repeat feeds N kept-alive requests (a signed-delivery-sized POST, headers and body in one read) to a
fresh protocol instance on a fake transport and runs the event loop until each is answered; A and B
alternate (A B, B A, ...). Prints microseconds per request cycle (min and median) and the median of the
per-repeat B/A ratios: the protocol's own cost, which the end-to-end bench cannot resolve on a shared
machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from runinfra_webhooks.service.receiver.edge import EdgeLimits, bounded_protocol

REQUEST = (b"POST /webhooks/runinfra HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
           b"runinfra-signature: t=1796163992,v1=" + b"a" * 64 + b"\r\ncontent-length: 300\r\n\r\n" + b"x" * 300)


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self._closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5) if name in ("peername", "sockname") else default

    def write(self, data: Any) -> None:
        return None

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


async def _run(cls: type[HttpToolsProtocol], n: int) -> float:
    config = Config(_app, lifespan="off", log_level="warning")
    config.load()
    protocol = cls(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    protocol.connection_made(_Transport())
    started = time.perf_counter()
    for _ in range(n):
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)  # the request's ASGI task runs
        await asyncio.sleep(0)
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.protocol_ab")
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--repeats", type=int, default=30)
    a = p.parse_args()
    bounded = bounded_protocol(EdgeLimits(max_header_bytes=16_384, header_timeout=10, max_connections=4096))
    kinds: tuple[tuple[str, type[HttpToolsProtocol]], ...] = (("stock", HttpToolsProtocol), ("bounded", bounded))
    res: dict[str, list[float]] = {"stock": [], "bounded": []}
    for r in range(a.repeats):
        for name, cls in kinds if r % 2 == 0 else tuple(reversed(kinds)):
            res[name].append(asyncio.run(_run(cls, a.requests)))
    for name, values in res.items():
        print(f"{name}: min {min(values):.1f} us, median {statistics.median(values):.1f} us per request cycle")
    ratio = statistics.median(b / s for s, b in zip(res["stock"], res["bounded"], strict=True))
    print(f"bounded/stock per-repeat ratio, median: {ratio:.3f}")


if __name__ == "__main__":
    main()
