"""The receiver with parts switched off, to attribute its per-request cost (bench only, never deployed).

    python -m bench.variant_app --port P --variant full|full-edge|no-redis|no-redis-no-log|no-index

``no-redis`` answers every verified delivery as if the ingest script had queued it (no Redis call, and no
audit digest / command packing either, since those live in ``Ingestor``); ``no-log`` also drops the
receiver's one log line per delivery; ``full-edge`` is ``full`` served with the receiver's bounded HTTP
protocol (``service.receiver.edge``, as ``serve`` runs it) instead of uvicorn's stock httptools one, so
the two differ in nothing else; ``no-index`` runs the ingest script without its console-index block (the
"before" of the console's ingest overhead, bench.console). Everything else (uvicorn options, middleware,
verification, parsing, metrics, the answer) is the real app from ``service.app.create_app``.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

import runinfra_webhooks.service.receiver.webhook as receiver_module
import runinfra_webhooks.service.storage.ingest as ingest_module
from runinfra_webhooks.service.gc_tuning import settle_after_startup
from runinfra_webhooks.service.logs import configure_logging
from runinfra_webhooks.service.receiver.app import create_app
from runinfra_webhooks.service.settings import load_settings
from runinfra_webhooks.service.storage.ingest import Delivery, Ingestor, IngestOutcome


class _NoLog:
    def info(self, *args: Any, **kwargs: Any) -> None:
        return None

    warning = info


def without_console_index(script: str) -> str:
    """The ingest script as it was before the console's indexes: their block and the audit link removed."""
    link = ", 'audit_id', audit_id)"
    assert link in script
    script = script.replace(link, ")")
    start = script.index("-- Console indexes (event_index.py;")
    end = script.index("return outcome", start)
    return script[:start] + script[end:]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--variant", choices=["full", "full-edge", "no-redis", "no-redis-no-log", "no-index"],
                   required=True)
    a = p.parse_args()
    settings = load_settings()
    configure_logging(settings.log_level)
    if a.variant.startswith("no-redis"):
        async def ingest(self: Ingestor, d: Delivery) -> IngestOutcome:
            return IngestOutcome.QUEUED

        Ingestor.ingest = ingest  # type: ignore[method-assign]
    if a.variant == "no-index":
        ingest_module._SCRIPT = without_console_index(ingest_module._SCRIPT)
    if a.variant.endswith("no-log"):
        receiver_module.log = _NoLog()
    app = create_app(settings)
    settle_after_startup()  # as `serve` does
    extra: dict[str, Any] = {}
    if a.variant == "full-edge":
        from runinfra_webhooks.service.receiver.edge import EdgeLimits, bounded_protocol

        extra["http"] = bounded_protocol(EdgeLimits(max_header_bytes=settings.max_header_bytes,
                                                    header_timeout=settings.header_timeout,
                                                    max_connections=settings.max_connections))
    uvicorn.run(app, host="127.0.0.1", port=a.port, access_log=False, log_level="warning",
                timeout_graceful_shutdown=10, **extra)


if __name__ == "__main__":
    main()
