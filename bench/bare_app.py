"""The ceiling of the stack: a bare Starlette endpoint that reads the body and answers 202.

Served by uvicorn with the same options as ``python -m runinfra_webhooks serve`` (uvloop + httptools when installed,
no access log), so the only difference from the receiver is what the receiver does per request.
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def endpoint(request: Request) -> Response:
    await request.body()
    return Response(status_code=202)


app = Starlette(routes=[Route("/webhooks/runinfra", endpoint, methods=["POST"])])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    uvicorn.run(app, host=a.host, port=a.port, access_log=False, log_level="warning", timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()
