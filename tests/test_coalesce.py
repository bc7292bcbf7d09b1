"""Concurrent script calls share round trips, yet each keeps its own atomic run, reply and error."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from runinfra_webhooks.service.storage.coalesce import Coalescer
from tests.redis_server import as_async_db

# Returns its argument, or fails with a script error when asked to.
ECHO = """
if ARGV[1] == 'boom' then return redis.error_reply('ERR boom') end
redis.call('INCR', KEYS[1])
return ARGV[1]
"""


async def reads_processed(redis: Redis) -> int:
    return int((await redis.info("stats"))["total_reads_processed"])


async def test_concurrent_calls_share_round_trips(redis: Redis) -> None:
    """50 calls made at once reach Redis in a few socket reads, each with its own reply."""
    echo = Coalescer(redis).script(ECHO)
    await echo(keys=["n"], args=["warm"])  # the script is loaded and the connection open before we count
    before = await reads_processed(redis)
    replies = await asyncio.gather(*(echo(keys=["n"], args=[f"v{i}"]) for i in range(50)))
    reads = await reads_processed(redis) - before - 1  # minus the INFO call itself
    assert replies == [f"v{i}".encode() for i in range(50)]
    assert int(await redis.get("n") or 0) == 51  # every call ran its own script
    assert reads <= 5, f"{reads} socket reads for 50 calls: they were not coalesced"


async def test_an_error_reply_fails_only_its_own_call(redis: Redis) -> None:
    """A script's error reply fails only the call that caused it; the calls around it get their replies."""
    echo = Coalescer(redis).script(ECHO)
    results = await asyncio.gather(echo(keys=["n"], args=["a"]), echo(keys=["n"], args=["boom"]),
                                   echo(keys=["n"], args=["b"]), return_exceptions=True)
    assert results[0] == b"a" and results[2] == b"b"
    assert isinstance(results[1], ResponseError) and "boom" in str(results[1])


async def test_a_script_redis_forgot_is_loaded_again_and_runs_once(redis: Redis) -> None:
    """After SCRIPT FLUSH (as after a restart or failover) calls still succeed, and none runs twice."""
    echo = Coalescer(redis).script(ECHO)
    await echo(keys=["n"], args=["first"])
    await redis.script_flush()
    replies = await asyncio.gather(*(echo(keys=["n"], args=[str(i)]) for i in range(10)))
    assert replies == [str(i).encode() for i in range(10)]
    assert int(await redis.get("n") or 0) == 11


async def test_plain_commands_share_the_round_trip_with_their_replies_parsed(redis: Redis) -> None:
    """Plain commands share the scripts' round trips, each reply parsed as redis-py parses it."""
    coalescer = Coalescer(redis)
    echo = coalescer.script(ECHO)
    await as_async_db(redis).sadd("set", "a", "b")
    await echo(keys=["n"], args=["warm"])
    before = await reads_processed(redis)
    results = await asyncio.gather(*(coalescer.command("SMEMBERS", "set") for _ in range(20)),
                                   *(echo(keys=["n"], args=[str(i)]) for i in range(20)))
    reads = await reads_processed(redis) - before - 1
    assert results[:20] == [{b"a", b"b"}] * 20  # redis-py's SMEMBERS reply: a set
    assert results[20:] == [str(i).encode() for i in range(20)]
    assert reads <= 5, f"{reads} socket reads for 40 calls"
