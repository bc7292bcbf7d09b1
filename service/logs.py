"""structlog set-up: one JSON object per line, stable dotted event names, bound fields.

Library logs (uvicorn, arq, httpx) go through the same renderer, so every line of a process is JSON.
Secrets never reach a log call: settings hold them as SecretStr, the receiver logs outcome codes, not
headers, and the gateway client logs idempotency keys and request ids, never the Authorization header.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import orjson
import structlog
from structlog.typing import Processor

__all__ = ["configure_logging"]


def _fallback(obj: Any) -> Any:
    """What structlog's JSONRenderer does with a value json cannot encode: __structlog__(), else repr()."""
    try:
        return obj.__structlog__()
    except AttributeError:
        return repr(obj)


_STDLIB = json.JSONEncoder(default=_fallback)


def _dumps(obj: Any, **_: Any) -> bytes:
    """orjson (several times faster than json, and the receiver logs a line per delivery), with the stdlib
    encoder for what orjson refuses (integers beyond 64 bits, lone surrogates), so a log call never fails."""
    try:
        return orjson.dumps(obj, default=_fallback, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return _STDLIB.encode(obj).encode("utf-8", "backslashreplace")


def configure_logging(level: str = "info", *, extra_processors: Sequence[Processor] = ()) -> None:
    """``extra_processors`` run before rendering (tracing adds the trace and span ids to each line)."""
    numeric = logging.getLevelName(level.upper())
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.JSONRenderer()],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, structlog.processors.add_log_level, timestamper],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    # httpx logs every request line at INFO; our gateway.call event carries more (key, request id) already.
    logging.getLogger("httpx").setLevel(max(numeric, logging.WARNING))
    structlog.configure(
        # No contextvars merge: nothing binds contextvars (loggers are bound explicitly), and the receiver
        # logs a line per delivery.
        processors=[
            structlog.processors.add_log_level,
            timestamper,
            *extra_processors,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.BytesLoggerFactory(file=sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )
