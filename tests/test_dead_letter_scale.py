"""Dead-letter listing and replay of many events: paged, complete, in order, and safe to kill half-way.

Driven through the console script on a real Redis holding thousands of dead letters made by the real
ingest script and transitions (tests.dead_letter_fill).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from redis import Redis as SyncRedis
from redis.asyncio import Redis

from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.records import Records
from tests.dead_letter_fill import RETENTION_S, dead_id, fill_dead_letters
from tests.processes import cli, stack_env

N_LISTED = 2_500
N_REPLAYED = 10_000


def _env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return stack_env(redis_url, "http://127.0.0.1:9", tmp_path / "artifacts")


def _calls(redis: SyncRedis, command: str) -> int:
    stats: dict[str, object] = redis.info("commandstats")  # type: ignore[assignment]
    entry = stats.get(f"cmdstat_{command}")
    return int(entry["calls"]) if isinstance(entry, dict) else 0


def test_dead_letter_list_is_complete_ordered_and_read_in_pages(redis_url: str, tmp_path: Path) -> None:
    """2,500 dead letters (three per millisecond, so pages end inside a millisecond) are all listed, oldest
    first, in both formats, read in pages of records without their bodies, never one read per event."""
    asyncio.run(fill_dead_letters(redis_url, N_LISTED, per_ms=3))
    env = _env(redis_url, tmp_path)
    redis = SyncRedis.from_url(redis_url)
    try:
        redis.config_resetstat()
        listed = cli(env, "dead-letter", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [r["event_id"] for r in rows] == [dead_id(i) for i in range(N_LISTED)]
        assert {r["state"] for r in rows} == {"dead_lettered"}
        assert rows[0]["reason"] == "gateway_bad_request"
        # Paged: a few range reads, one field read per event, and no whole-record (body) reads.
        assert 3 <= _calls(redis, "zrangebyscore") <= 6
        assert _calls(redis, "hmget") == N_LISTED
        assert _calls(redis, "hgetall") == _calls(redis, "get") == 0

        text = cli(env, "dead-letter", "list")
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        assert [line.split()[0] for line in lines] == [dead_id(i) for i in range(N_LISTED)]
        assert f"{N_LISTED} dead-lettered event(s)" in text.stderr
    finally:
        redis.close()


def test_dead_letter_list_of_none_is_an_empty_json_array(redis_url: str, tmp_path: Path) -> None:
    listed = cli(_env(redis_url, tmp_path), "dead-letter", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []


def _records(redis: Redis) -> Records:
    return Records(redis, event_retention=RETENTION_S, dead_letter_retention=RETENTION_S, job_expiry_s=RETENTION_S)


async def test_pages_yield_each_event_once_even_if_replayed_and_dead_lettered_again(
    redis_url: str, redis: Redis
) -> None:
    """A pass replays page by page; an event it replayed and that fails again meanwhile is not met again."""
    await fill_dead_letters(redis_url, 25, per_ms=1)
    records = _records(redis)
    seen: list[str] = []
    async for page in records.dead_letter_pages(page=10):
        for r in page:
            await records.replay(r.event_id, time.time_ns() // 1_000_000)
        if not seen:  # after the first page, a worker fails the first replayed one again, now
            now = time.time_ns() // 1_000_000
            assert not isinstance(await records.start(page[0].event_id, 1, now), int)
            assert await records.dead_lettered(page[0].event_id, 1, now, "gateway_bad_request", "400 again")
        seen += [r.event_id for r in page]
    # Paging by position from the front, or up to the set's end as it grows, would meet it again.
    assert seen == [dead_id(i) for i in range(25)]
    assert await redis.zrange(keys.DEAD_LETTERS, 0, -1) == [dead_id(0).encode()]


async def test_pages_never_split_one_millisecond(redis_url: str, redis: Redis) -> None:
    """Twelve events dead-lettered in one millisecond, pages of 5: every event once, in order."""
    await fill_dead_letters(redis_url, 12, per_ms=12)
    pages = [[r.event_id for r in page] async for page in _records(redis).dead_letter_pages(page=5)]
    assert pages == [[dead_id(i) for i in range(12)]]


def _states(redis: SyncRedis, n: int) -> list[tuple[str, int, bool]]:
    """(state, generation, in the dead-letter set) of every filled event."""
    pipe = redis.pipeline(transaction=False)
    for i in range(n):
        pipe.hmget(keys.event(dead_id(i)), ["state", "generation"])
        pipe.zscore(keys.DEAD_LETTERS, dead_id(i))
    replies = pipe.execute()
    out = []
    for (state, generation), score in zip(replies[::2], replies[1::2], strict=True):
        assert state is not None, "an event was lost"
        out.append((state.decode(), int(generation), score is not None))
    return out


def _replay_killed(env: dict[str, str], stdout: Path, delay: float) -> str:
    """Start `replay --all-dead-lettered`, SIGKILL it ``delay`` seconds after its first progress line."""
    with stdout.open("wb") as out, subprocess.Popen(
            [sys.executable, "-m", "runinfra_webhooks", "replay", "--all-dead-lettered"], env=env, stdout=out,
            stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    return first


def _check_replayed_once_or_parked(redis: SyncRedis) -> int:
    """Every event queued under generation 1 with one arq job, or dead-lettered under generation 0."""
    states = _states(redis, N_REPLAYED)
    replayed = sum(s == ("queued", 1, False) for s in states)
    parked = sum(s == ("dead_lettered", 0, True) for s in states)
    assert replayed + parked == N_REPLAYED, set(states) - {("queued", 1, False), ("dead_lettered", 0, True)}
    assert redis.zcard(keys.ARQ_QUEUE) == replayed  # one job each, all of generation 1
    jobs: list[bytes] = redis.zrange(keys.ARQ_QUEUE, 0, -1)  # type: ignore[assignment]
    assert all(m.endswith(b"@1") for m in jobs)
    return replayed


def test_replay_all_killed_half_way_leaves_each_replayed_once_or_still_dead_lettered(
    redis_url: str, tmp_path: Path
) -> None:
    """SIGKILL right after the first progress line (between pages), then a second run killed 50 ms after
    its first (inside a page): each event is queued under generation 1 with one arq job, or still
    dead-lettered under generation 0; none lost. A last run replays exactly the rest."""
    asyncio.run(fill_dead_letters(redis_url, N_REPLAYED, per_ms=3))
    env = _env(redis_url, tmp_path)
    redis = SyncRedis.from_url(redis_url)
    try:
        first = _replay_killed(env, tmp_path / "first.stdout", 0)
        assert first.startswith("replayed ") and first.rstrip().endswith(f"/{N_REPLAYED}"), first
        after_first = _check_replayed_once_or_parked(redis)
        assert 0 < after_first < N_REPLAYED, "the kill did not land half-way"

        _replay_killed(env, tmp_path / "second.stdout", 0.05)
        after_second = _check_replayed_once_or_parked(redis)
        assert after_first < after_second < N_REPLAYED, "the second kill did not land half-way"

        parked = N_REPLAYED - after_second
        again = cli(env, "replay", "--all-dead-lettered", timeout=120)
        assert again.returncode == 0, again.stderr
        assert len(again.stdout.splitlines()) == parked
        assert f"{parked} replayed, 0 no longer dead-lettered" in again.stderr
        assert f"replayed {parked}/{parked}" in again.stderr
        assert len(again.stderr.splitlines()) <= parked // 1000 + 3  # progress per page, not per event
        assert set(_states(redis, N_REPLAYED)) == {("queued", 1, False)}
        assert redis.zcard(keys.ARQ_QUEUE) == N_REPLAYED
        print(f"replayed when killed: {after_first}, then {after_second} of {N_REPLAYED}; last run {parked}")
    finally:
        redis.close()
