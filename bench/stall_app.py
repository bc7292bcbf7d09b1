"""The bare endpoint with a known stall: the whole process stops for 100 ms every 2 s.

A check of a load generator's latency maths: at a constant rate, 5 % of the requests are due during a stall
and wait up to 100 ms for its end, uniformly, so an open-loop generator must report p99 ~ 80 ms and
p99.9 ~ 98 ms (plus the service time), whatever the rate:

    taskset -c 0 .venv/bin/python -m bench.stall_app --port 8400 &
    taskset -c 1 .venv/bin/python -m bench.openloop --generate --target 127.0.0.1:8400 --rate 1000 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette

from bench.bare_app import app as bare

STALL_S = 0.1
EVERY_S = 2.0


@contextlib.asynccontextmanager
async def stalls(app: Starlette) -> AsyncIterator[None]:
    async def stall_forever() -> None:
        while True:
            await asyncio.sleep(EVERY_S - STALL_S)
            time.sleep(STALL_S)  # noqa: ASYNC251 - the point: blocks the loop, nothing is read or answered

    task = asyncio.create_task(stall_forever())
    yield
    task.cancel()


app = Starlette(routes=bare.routes, lifespan=stalls)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=a.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
