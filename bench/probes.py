"""Timestamps of each job's steps inside a drain worker, for ``bench.slots``.

``install(path)`` wraps, in this process only, arq's ``run_job`` (a slot taken to a slot freed), the worker's
``process_event`` (our part of the job) and the gateway client's one HTTP attempt, and writes one record per job
to ``path`` as JSON when the process exits: ``[job_start, event_start, call_start, call_end, event_end,
job_end]`` in ``time.perf_counter`` seconds (the call fields null for a job that made none).
"""

from __future__ import annotations

import atexit
import contextvars
import json
import time
from pathlib import Path
from typing import Any

__all__ = ["install"]

_job: contextvars.ContextVar[list[float | None] | None] = contextvars.ContextVar("bench_probe_job", default=None)


def install(path: Path) -> None:
    from runinfra_webhooks.service.gateway.client import GatewayClient
    from runinfra_webhooks.workers import settings as worker_settings
    from runinfra_webhooks.workers.jobs import process_event

    records: list[list[float | None]] = []
    worker_cls: Any = worker_settings._Worker
    run_job = worker_cls.run_job
    attempt = GatewayClient._attempt

    async def timed_run_job(self: Any, job_id: str, score: int) -> None:
        record: list[float | None] = [time.perf_counter(), None, None, None, None, None]
        _job.set(record)  # arq runs the function in a task of its own, which copies this context
        try:
            await run_job(self, job_id, score)
        finally:
            record[5] = time.perf_counter()
            records.append(record)

    async def timed_process_event(ctx: dict[str, Any], *args: Any) -> str:
        record = _job.get()
        if record is not None:
            record[1] = time.perf_counter()
        try:
            return await process_event(ctx, *args)
        finally:
            if record is not None:
                record[4] = time.perf_counter()

    async def timed_attempt(self: GatewayClient, *args: Any, **kwargs: Any) -> Any:
        record = _job.get()
        started = time.perf_counter()
        try:
            return await attempt(self, *args, **kwargs)
        finally:
            if record is not None and record[2] is None:  # the first attempt of the job's first call
                record[2], record[3] = started, time.perf_counter()

    worker_cls.run_job = timed_run_job
    vars(worker_settings)["process_event"] = timed_process_event  # the worker's job looks it up on every call
    GatewayClient._attempt = timed_attempt  # type: ignore[method-assign]
    atexit.register(lambda: path.write_text(json.dumps(records)))
