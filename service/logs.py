"""structlog set-up: one JSON object per line, stable dotted event names, bound fields.

Library logs (uvicorn, arq, httpx) go through the same renderer, so every line of a process is JSON.
Secrets never reach a log call: settings hold them as SecretStr, the receiver logs outcome codes, not
headers, and the gateway client logs idempotency keys and request ids, never the Authorization header.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import structlog

__all__ = ["configure_logging"]


def _fallback(obj: Any) -> Any:
    """What structlog's JSONRenderer does with a value json cannot encode: __structlog__(), else repr()."""
    try:
        return obj.__structlog__()
    except AttributeError:
        return repr(obj)


# json.dumps(..., default=...) builds a new encoder on every call; one encoder with the same settings gives
# the same line (one log line per delivery is on the receiver's hot path).
_ENCODER = json.JSONEncoder(default=_fallback)


def _dumps(obj: Any, **_: Any) -> str:
    return _ENCODER.encode(obj)


def configure_logging(level: str = "info") -> None:
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
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
