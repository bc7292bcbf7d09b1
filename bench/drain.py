"""One worker process of the drain bench, run by ``bench.run`` in a subprocess pinned to a core.

``python -m bench.drain real``  the project's worker exactly as ``python -m runinfra_webhooks worker --burst`` builds it
``python -m bench.drain noop``  a stock arq Worker running a no-op function, with the same serializer,
                                max_jobs, poll_delay and keep_result as the project's worker, and on the same
                                event loop (uvloop)

Both read the settings from the environment like the CLI, configure logging like the CLI, and print one
JSON line: wall-clock start and end of the worker's main loop (from connecting to Redis to the burst
exit), and arq's job counters. CPU time is read by the parent from the process's rusage. With
``BENCH_TIMELINE=path`` set, ``real`` also writes each job's step times there (``bench.probes``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import uvloop
from arq import Worker
from arq.connections import RedisSettings
from arq.worker import func

from runinfra_webhooks.service.gc_tuning import settle_after_startup
from runinfra_webhooks.service.logs import configure_logging
from runinfra_webhooks.service.settings import load_settings
from runinfra_webhooks.service.storage import arq_job
from runinfra_webhooks.workers.settings import build_worker

NOOP = "bench_noop"


async def noop(ctx: dict[str, Any], *args: Any) -> None:
    return None


def main() -> None:
    mode = sys.argv[1]
    # Both on the loop `runinfra-webhooks worker` runs on, so the ratio compares the jobs, not the loops.
    asyncio.set_event_loop(uvloop.new_event_loop())
    settings = load_settings()
    configure_logging(settings.log_level)
    if mode == "real":
        if timeline := os.environ.get("BENCH_TIMELINE"):
            from bench.probes import install

            install(Path(timeline))
        worker = build_worker(settings, burst=True, after_startup=settle_after_startup)  # as `worker` does
    elif mode == "noop":
        worker = Worker(
            functions=[func(noop, name=NOOP)],
            redis_settings=RedisSettings.from_dsn(settings.redis_url),
            job_serializer=arq_job.serialize,
            job_deserializer=arq_job.deserialize,
            max_jobs=settings.worker_concurrency,
            poll_delay=settings.worker_poll_delay,
            keep_result=0,
            burst=True,
            handle_signals=False,
        )
    else:
        raise SystemExit(f"unknown mode {mode!r}")

    times: dict[str, float] = {}
    inner = worker.main

    async def timed_main() -> None:
        times["start"] = time.time()
        await inner()
        times["end"] = time.time()

    worker.main = timed_main  # type: ignore[method-assign]
    worker.run()
    out = {"mode": mode, **times, "complete": worker.jobs_complete, "failed": worker.jobs_failed,
           "retried": worker.jobs_retried}
    sys.stderr.write("DRAIN_JSON " + json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
