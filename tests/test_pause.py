"""Pausing event types: the job start parks a paused event as queued, resume puts it back on the queue."""

from __future__ import annotations

import json
import time
from pathlib import Path

from redis.asyncio import Redis

from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.pause import is_paused, pause, paused_types, resume
from runinfra_webhooks.service.storage.records import Records
from tests.processes import cli, stack_env
from tests.queued import queue


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def records(redis: Redis) -> Records:
    return Records(redis, event_retention=600, dead_letter_retention=600, job_expiry_s=600)


async def test_start_parks_an_event_of_a_paused_type_as_queued_without_an_attempt(redis: Redis) -> None:
    """A paused type's job does not start: the event stays queued, 0 attempts, out of the sweep's index."""
    await queue(redis, "transcription.completed", "evt_p1")
    await pause(redis, "transcription.completed")
    assert await records(redis).start("evt_p1", 0, now_ms()) == -4
    record = await records(redis).get("evt_p1")
    assert record is not None and (record.state, record.attempts) == ("queued", 0)
    assert await redis.zscore(keys.INFLIGHT, "evt_p1") is None
    assert await redis.zscore(keys.PARKED, "evt_p1") is not None
    await queue(redis, "deployment.created", "evt_other")
    assert not isinstance(await records(redis).start("evt_other", 0, now_ms()), int)


async def test_resume_puts_parked_events_back_on_the_queue(redis: Redis) -> None:
    """After resume the parked event has its arq job again, is in flight, and starts normally."""
    await queue(redis, "transcription.completed", "evt_p2")
    await pause(redis, "transcription.completed")
    await records(redis).start("evt_p2", 0, now_ms())
    await redis.delete(keys.ARQ_JOB + "evt_p2@0")  # arq removes a finished job's key
    await redis.zrem(keys.ARQ_QUEUE, "evt_p2@0")
    assert await resume(redis, "transcription.completed", now_ms=now_ms(), job_expiry_ms=60_000) == 1
    assert await redis.exists(keys.ARQ_JOB + "evt_p2@0") == 1
    assert await redis.zscore(keys.ARQ_QUEUE, "evt_p2@0") is not None
    assert await redis.zscore(keys.INFLIGHT, "evt_p2") is not None
    assert await redis.zcard(keys.PARKED) == 0
    started = await records(redis).start("evt_p2", 0, now_ms())
    assert not isinstance(started, int) and started.state == "processing" and started.attempts == 1


async def test_pause_all_covers_every_type_until_resume_all(redis: Redis) -> None:
    """pause --all holds every type; resuming one type does not lift it; resume --all re-queues all."""
    await pause(redis, None)
    await queue(redis, "deployment.created", "evt_a1")
    await queue(redis, "transcription.completed", "evt_a2")
    for event_id in ("evt_a1", "evt_a2"):
        assert await records(redis).start(event_id, 0, now_ms()) == -4
    assert await is_paused(redis, "deployment.created")
    assert await resume(redis, "deployment.created", now_ms=now_ms(), job_expiry_ms=60_000) == 0
    assert await paused_types(redis) == ["*"]
    assert await resume(redis, None, now_ms=now_ms(), job_expiry_ms=60_000) == 2
    assert await paused_types(redis) == []
    assert not await is_paused(redis, "deployment.created")


async def test_resume_of_one_type_leaves_other_paused_types_parked(redis: Redis) -> None:
    """Resuming one type moves only its own parked events."""
    await pause(redis, "deployment.created")
    await pause(redis, "transcription.completed")
    await queue(redis, "deployment.created", "evt_b1")
    await queue(redis, "transcription.completed", "evt_b2")
    for event_id in ("evt_b1", "evt_b2"):
        assert await records(redis).start(event_id, 0, now_ms()) == -4
    assert await resume(redis, "deployment.created", now_ms=now_ms(), job_expiry_ms=60_000) == 1
    assert [m.decode() for m in await redis.zrange(keys.PARKED, 0, -1)] == ["evt_b2"]


async def test_cli_pause_resume_and_events_show_paused(redis: Redis, redis_url: str, tmp_path: Path) -> None:
    """`pause TYPE` / `resume TYPE` answer JSON, `events show` says paused while it is, bad types exit 2."""
    env = stack_env(redis_url, "http://127.0.0.1:9/v1", tmp_path / "artifacts")

    await queue(redis, "transcription.completed", "evt_c1")
    paused = cli(env, "pause", "transcription.completed")
    assert paused.returncode == 0 and json.loads(paused.stdout) == {"paused": ["transcription.completed"]}
    assert json.loads(cli(env, "events", "show", "evt_c1").stdout)["paused"] is True
    await records(redis).start("evt_c1", 0, now_ms())
    resumed = cli(env, "resume", "transcription.completed")
    assert resumed.returncode == 0
    assert json.loads(resumed.stdout) == {"resumed": "transcription.completed", "requeued": 1, "paused": []}
    shown = json.loads(cli(env, "events", "show", "evt_c1").stdout)
    assert shown["paused"] is False and shown["state"] == "queued"
    assert cli(env, "pause", "Not A Type").returncode == 2
    assert cli(env, "pause").returncode == 2
    assert cli(env, "resume", "--all").returncode == 0
