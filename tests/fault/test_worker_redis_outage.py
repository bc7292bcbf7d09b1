"""The worker's own handling of a Redis outage (the process-level proof is test_redis_kill.py).

Stock arq ends the worker process on the first connection error of its poll loop, and a connection error
while starting a job leaks that job's slot for good. The worker must instead log, wait and go on, with
every slot intact.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError

from runinfra_webhooks.workers.settings import REDIS_RETRY_S, build_worker
from tests.conftest import make_settings
from tests.down_pool import DownPool

pytestmark = pytest.mark.fault


async def test_poll_loop_logs_and_waits_out_an_unreachable_redis(redis_url: str, tmp_path: Path) -> None:
    """A connection error in the poll loop is logged and waited out, instead of ending the worker."""
    worker = build_worker(make_settings(redis_url, tmp_path), burst=True)
    worker._pool = DownPool()  # type: ignore[assignment]  # a stand-in that fails like an unreachable Redis
    started = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        await worker._poll_iteration()  # before: ConnectionError escaped and ended the process
    waited = time.monotonic() - started
    assert [entry for entry in logs if entry["event"] == "worker.redis_unavailable"] == [
        {"event": "worker.redis_unavailable", "log_level": "warning", "error": "ConnectionError",
         "retry_in": REDIS_RETRY_S},
    ]
    assert waited >= REDIS_RETRY_S * 0.9, f"tried again after {waited:.3f} s: a dead Redis would be hammered"


async def test_a_job_start_that_fails_gives_its_slot_back(redis_url: str, tmp_path: Path) -> None:
    """A job start that fails on Redis frees the slot it took, so outages do not shrink the worker."""
    worker = build_worker(make_settings(redis_url, tmp_path, RUNINFRA_WORKER_CONCURRENCY=2), burst=True)
    worker._pool = DownPool()  # type: ignore[assignment]  # a stand-in that fails like an unreachable Redis
    for _ in range(3):
        with pytest.raises(RedisConnectionError):
            await worker.start_jobs([b"evt_x@0", b"evt_y@0"])
    assert worker.job_counter == 0  # before: 1 leaked per failure, until the worker ran nothing at all
    assert not worker.sem.locked()
