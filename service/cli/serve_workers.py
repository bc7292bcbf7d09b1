"""``serve --workers N``: N receiver processes on one listening socket, under uvicorn's process manager.

The parent binds the socket and supervises: a worker that dies is replaced, SIGTERM or SIGINT stops every
worker gracefully (each finishes its in-flight requests, up to the graceful-shutdown timeout), then the
parent exits. uvicorn starts each worker as a fresh interpreter and hands it the socket, so each worker
builds its own receiver in ``WorkerConfig.load``: settings, handler registry, Redis connection pool, metrics
and the bounded HTTP protocol with its limits. The kernel spreads new connections over the workers; a
kept-alive connection stays with the worker that accepted it.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import structlog
import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

from runinfra_webhooks.handlers.registry import Registry, load_registry
from runinfra_webhooks.service.gc_tuning import settle_after_startup
from runinfra_webhooks.service.logs import configure_logging
from runinfra_webhooks.service.receiver.app import create_app
from runinfra_webhooks.service.receiver.edge import EdgeLimits, bounded_protocol
from runinfra_webhooks.service.settings import ReceiverSettings, load_settings
from runinfra_webhooks.service.tracing import Tracing, setup_tracing

__all__ = ["WorkerConfig", "receiver_for_process", "serve_processes"]

GRACEFUL_SHUTDOWN_S = 10


def receiver_for_process(settings: ReceiverSettings, registry: Registry, tracing: Tracing
                         ) -> tuple[Starlette, type[HttpToolsProtocol]]:
    """The receiver app and the bounded HTTP protocol it is served with, for one process."""
    app = create_app(settings, registry=registry, tracing=tracing)
    protocol = bounded_protocol(EdgeLimits(max_header_bytes=settings.max_header_bytes,
                                           header_timeout=settings.header_timeout,
                                           max_connections=settings.max_connections))
    return app, protocol


class WorkerConfig(uvicorn.Config):
    """uvicorn's settings for the receiver's worker processes. The parent passes this object to each worker
    (uvicorn's process manager sends it to the new interpreter); ``load`` runs there, in the worker."""

    supervisor_pid = 0  # set by the parent before it starts the workers

    def load(self) -> None:
        if self.loaded:
            return
        # The worker reads the environment it inherited, which the parent has already validated.
        settings = load_settings(ReceiverSettings)
        registry = load_registry(builtin=settings.builtin_reactions, modules=settings.handler_modules)
        tracing = setup_tracing("receiver", os.environ)
        configure_logging(settings.log_level, extra_processors=tracing.log_processors())
        info = tracing.describe()
        if info["tracing"] == "unavailable":
            structlog.get_logger("service.tracing").warning("tracing.unavailable", **info)
        elif tracing.enabled:
            structlog.get_logger("service.tracing").info("tracing.enabled", **info)
        self.app, self.http = receiver_for_process(settings, registry, tracing)
        super().load()
        _stop_with_supervisor(self.supervisor_pid)
        settle_after_startup()


def _stop_with_supervisor(supervisor: int, interval: float = 1.0) -> None:
    """A worker whose supervisor died (SIGKILL, OOM) stops itself gracefully instead of serving on,
    orphaned, on a port nobody manages: its parent pid is no longer the supervisor's once it is re-parented
    (also when that happened before this worker got here)."""

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def serve_processes(host: str, port: int, workers: int) -> int:
    # The app is built by each worker in WorkerConfig.load; the string only names what stands in for it.
    config = WorkerConfig(app="runinfra_webhooks.service.receiver.app:create_app", host=host, port=port,
                          workers=workers, access_log=False, log_config=None,
                          timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    config.supervisor_pid = os.getpid()
    sock = config.bind_socket()
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
    return 0
