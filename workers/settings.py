"""arq glue: a Worker built from our WorkerSettings, with JSON jobs (never pickle) and our timeouts.

Timing, chosen so a killed worker's job comes back within 60 s: a handler gets RUNINFRA_JOB_TIMEOUT
(default 30 s) of our own deadline; arq's function timeout is 5 s longer so ours always fires first; arq
re-runs a job whose worker died once its in-progress key expires, i.e. after arq's timeout + 10 s = 45 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import structlog
from arq import Retry, Worker
from arq.utils import timestamp_ms
from arq.worker import func

from runinfra_webhooks.handlers.registry import Registry, load_registry
from runinfra_webhooks.service.core.route_limits import route_limits
from runinfra_webhooks.service.gateway.client import GatewayClient
from runinfra_webhooks.service.gateway.flow import FlowControl, job_deadline
from runinfra_webhooks.service.settings import WorkerSettings
from runinfra_webhooks.service.storage import arq_job
from runinfra_webhooks.service.storage.coalesce import Coalescer
from runinfra_webhooks.service.storage.connection import STORAGE_ERRORS, arq_redis_settings, pack_in_c
from runinfra_webhooks.service.storage.job_claim import JobClaims
from runinfra_webhooks.service.storage.records import Records
from runinfra_webhooks.service.tracing import NO_TRACING, Tracing
from runinfra_webhooks.workers.alerts import Alerts
from runinfra_webhooks.workers.deps import WorkerDeps
from runinfra_webhooks.workers.jobs import process_event, process_part
from runinfra_webhooks.workers.metrics import WorkerMetrics
from runinfra_webhooks.workers.monitor import monitor_loop
from runinfra_webhooks.workers.sweep import SweepCursor, sweep_once

__all__ = ["build_worker"]

log = structlog.get_logger("workers.settings")
ARQ_MARGIN_S = 5
# arq counts every run of a job, also the ones that only waited on an open circuit or a gateway limit (which our
# own attempt count gives back), so its loop guard sits far above RUNINFRA_MAX_ATTEMPTS.
ARQ_EXTRA_TRIES = 10_000
GATEWAY_ROUTES = ("/embeddings", "/chat/completions", "/audio/speech")
REDIS_RETRY_S = 1.0


class _Worker(Worker):
    """arq's Worker, except that a Redis outage does not end the process and that freed slots fill faster.

    Stock arq lets a connection error from its poll loop (or from a job's own bookkeeping, re-raised there)
    escape ``main()``, so one Redis restart stops every worker and the queue waits for a human. Here the poll
    loop logs it and tries again; jobs caught mid-flight come back through arq's in-progress expiry or
    the sweep, like after a worker crash.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slot_freed = asyncio.Event()
        self._claims: JobClaims | None = None  # made on the first start: arq's pool exists from then on

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except STORAGE_ERRORS as exc:
            log.warning("worker.redis_unavailable", error=type(exc).__name__, retry_in=REDIS_RETRY_S)
            await asyncio.sleep(REDIS_RETRY_S)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        # A job stays in the queue while it runs, so every poll reads this worker's own running jobs first;
        # arq would spend a WATCH/EXISTS/ZSCORE round trip on each just to find it in progress.
        waiting = [job_id for job_id in job_ids if not self._running_here(job_id)]
        while waiting:
            free = self.max_jobs - self.job_counter
            if free <= 0:
                # As stock arq does: wait for a slot, then go on with the ids this poll read.
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            # arq starts jobs one after another, four round trips each (WATCH, EXISTS, ZSCORE, MULTI/EXEC): when
            # 50 gateway-bound jobs ended together, refilling their slots took ~90 ms. Here each start is one
            # atomic claim script, and the starts of one batch go out together.
            batch, waiting = waiting[:free], waiting[free:]
            results = await asyncio.gather(*(self._start_one(job_id) for job_id in batch), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._slot_freed.set()

    def _running_here(self, job_id: bytes) -> bool:
        task = self.tasks.get(job_id.decode())
        return task is not None and not task.done()

    async def _start_one(self, job_id_b: bytes) -> None:
        # arq's start_jobs for one id, with its four-round-trip claim replaced by one coalesced script.
        await self.sem.acquire()
        if self.job_counter >= self.max_jobs:
            self.sem.release()
            return
        self.job_counter += 1
        job_id = job_id_b.decode()
        try:
            if self._claims is None:
                self._claims = JobClaims(Coalescer(self.pool), queue=self.queue_name)
            score = await self._claims.claim(job_id, timestamp_ms(), int(self.in_progress_timeout_s * 1000))
        except BaseException:
            # The slot was counted before the round trip: without this, each Redis outage would leak slots
            # until the worker runs nothing at all.
            self._release_sem_dec_counter_on_complete()
            raise
        if score is None:  # running elsewhere, finished, or deferred: as arq, leave it
            self._release_sem_dec_counter_on_complete()
            return
        task = self.loop.create_task(self.run_job(job_id, score))
        task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
        self.tasks[job_id] = task


async def _sweep_loop(deps: WorkerDeps) -> None:
    cursor = SweepCursor()
    while True:
        await asyncio.sleep(deps.settings.sweep_interval)
        try:
            await sweep_once(deps, cursor)
        except STORAGE_ERRORS as exc:  # Redis away: try again next interval
            log.warning("sweep.failed", error=type(exc).__name__)


def _flow_control(settings: WorkerSettings, records: Records, alerts: Alerts, metrics: WorkerMetrics) -> FlowControl:
    return FlowControl(
        records.scripts,
        limits=route_limits(settings.gateway_rate_limit, settings.gateway_concurrency),
        breaker_threshold=settings.breaker_threshold,
        breaker_cooldown=settings.breaker_cooldown,
        # A lease outlives the longest call; the wait for one ends early enough to leave room for the call.
        lease_s=settings.gateway_timeout + ARQ_MARGIN_S,
        # A job waits for a permit only while half its time or a whole gateway timeout, the smaller, is left.
        margin_s=min(settings.gateway_timeout, settings.job_timeout / 2),
        retry_base=settings.retry_base,
        retry_cap=settings.retry_cap,
        on_transition=alerts.circuit if alerts.enabled else None,
        observe=metrics.observe_call,
    )


def build_worker(settings: WorkerSettings, *, registry: Registry | None = None, burst: bool = False,
                 after_startup: Callable[[], None] | None = None, tracing: Tracing = NO_TRACING,
                 metrics_port: int | None = None, metrics_host: str = "127.0.0.1") -> Worker:
    """``after_startup`` runs once the worker's long-lived state exists (the ``worker`` command settles the
    garbage collector there; tests build workers inside pytest and pass nothing). ``registry`` is loaded
    from the settings when not given (raises HandlerLoadError when a handler module does not load).
    ``tracing`` comes from ``setup_tracing``: each job attempt gets its consumer span from it.
    ``metrics_port`` serves Prometheus text at ``/metrics``."""
    handlers = registry if registry is not None else load_registry(
        builtin=settings.builtin_reactions, modules=settings.handler_modules)
    limits = route_limits(settings.gateway_rate_limit, settings.gateway_concurrency)
    metrics = WorkerMetrics(routes=sorted({*GATEWAY_ROUTES, *limits}))

    async def run_event(ctx: dict[str, Any], event_id: str, generation: int) -> str:
        # Gateway calls of this job stop waiting on limits in time for the job's own deadline.
        with job_deadline(settings.job_timeout):
            try:
                outcome = await process_event(ctx, event_id, generation)
            except Retry:
                metrics.job("retrying")
                raise
        metrics.job(outcome)
        return outcome

    async def run_part(ctx: dict[str, Any], event_id: str, generation: int, collection: str, revision: str) -> str:
        with job_deadline(settings.job_timeout):
            return await process_part(ctx, event_id, generation, collection, revision)

    async def on_startup(ctx: dict[str, Any]) -> None:
        redis = ctx["redis"]
        # arq builds its own pool: from here on its connections pack commands in C too (the one its start-up
        # checks used is dropped, so none is left packing in Python).
        pack_in_c(redis.connection_pool)
        await redis.connection_pool.disconnect()
        redis.connection_pool.reset()
        records = Records(redis, event_retention=settings.event_retention,
                          dead_letter_retention=settings.dead_letter_retention, job_expiry_s=settings.lost_deadline)
        alerts = Alerts(redis, records.scripts, url=settings.alert_url,
                        secret=settings.alert_secret.get_secret_value() if settings.alert_secret else None,
                        cooldown=settings.alert_cooldown, backlog_age=settings.alert_backlog_age,
                        retry_cap=settings.alert_retry_cap)
        flow = _flow_control(settings, records, alerts, metrics)
        gateway = GatewayClient.from_settings(settings, flow=flow) if settings.api_key is not None else None
        deps = WorkerDeps(settings=settings, redis=redis, gateway=gateway, records=records, registry=handlers,
                          tracing=tracing)
        ctx["deps"] = deps
        ctx["alerts"] = alerts
        ctx["sweeper"] = asyncio.create_task(_sweep_loop(deps))
        ctx["monitor"] = asyncio.create_task(monitor_loop(redis, alerts, metrics))
        if metrics_port is not None:
            metrics.serve(metrics_port, metrics_host)
        if after_startup is not None:
            after_startup()
        log.info("worker.started", concurrency=settings.worker_concurrency, gateway=gateway is not None)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        for name in ("sweeper", "monitor"):
            task: asyncio.Task[None] | None = ctx.get(name)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        deps: WorkerDeps | None = ctx.get("deps")
        if deps is not None and deps.gateway is not None:
            await deps.gateway.aclose()
        alerts: Alerts | None = ctx.get("alerts")
        if alerts is not None:
            await alerts.aclose()
        log.info("worker.stopped")

    # arq logs two INFO lines per job (start, end); the worker's own event.* line per job says more (event id,
    # type, outcome) and is the one kept. arq's warnings and errors still come through.
    logging.getLogger("arq.worker").setLevel(logging.WARNING)
    return _Worker(
        functions=[func(run_event, name=arq_job.FUNCTION, timeout=settings.job_timeout + ARQ_MARGIN_S,
                        # our own attempt limit dead-letters first; arq's only guards against a loop
                        max_tries=settings.max_attempts + ARQ_EXTRA_TRIES),
                   # a helper of a shared build hands itself on (Retry) while its worker is on that build already
                   func(run_part, name=arq_job.PART_FUNCTION, timeout=settings.job_timeout + ARQ_MARGIN_S,
                        max_tries=ARQ_EXTRA_TRIES)],
        redis_settings=arq_redis_settings(settings.redis_url),
        job_serializer=arq_job.serialize,
        job_deserializer=arq_job.deserialize,
        max_jobs=settings.worker_concurrency,
        poll_delay=settings.worker_poll_delay,
        keep_result=0,
        job_completion_wait=settings.shutdown_grace,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        burst=burst,
        handle_signals=not burst,
    )
