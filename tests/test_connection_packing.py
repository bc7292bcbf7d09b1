"""Clients from ``connect`` pack commands with hiredis in C: the same bytes redis-py's own packer writes, the
same DataError for what Redis cannot take, and the same replies from a real Redis, large values included."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.sentinel import SentinelManagedConnection
from redis.exceptions import DataError

from runinfra_webhooks.service.storage.connection import connect

COMMANDS: list[tuple[Any, ...]] = [
    ("SET", "key", "value"),
    ("EVALSHA", "a" * 40, 2, "k1", b"k2", 0, -7, 10**20, 1.5, 1e300, float("nan"), "é", b"\x00\xff"),
    ("CONFIG GET", "appendonly"),
    (b"CLIENT SETNAME", b"x"),
    ("SET", "big", b"x" * (1 << 20)),
    ("SET", "view", memoryview(b"abc")),
]


def _stock(args: tuple[Any, ...]) -> bytes:
    return b"".join(bytes(chunk) for chunk in Connection().pack_command(*args))


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: str(a[0]))
def test_commands_are_packed_to_the_bytes_redis_py_would_send(args: tuple[Any, ...]) -> None:
    conn = connect("redis://127.0.0.1:1/0").connection_pool.connection_class()
    assert b"".join(conn.pack_command(*args)) == _stock(args)
    assert b"".join(conn.pack_commands([args, ("PING",)])) == _stock(args) + _stock(("PING",))


@pytest.mark.parametrize("bad", [True, None, bytearray(b"x"), object()])
def test_an_argument_redis_cannot_take_is_still_redis_pys_data_error(bad: Any) -> None:
    conn = connect("redis://127.0.0.1:1/0").connection_pool.connection_class()
    with pytest.raises(DataError):
        conn.pack_command("SET", "k", bad)


@pytest.mark.parametrize(("url", "transport"), [
    ("redis://127.0.0.1:6379/0", Connection),
    ("rediss://127.0.0.1:6380/0", SSLConnection),
    ("unix:///run/redis.sock?db=2", UnixDomainSocketConnection),
    ("redis+sentinel://127.0.0.1:26379/mymaster", SentinelManagedConnection),
])
def test_every_transport_keeps_its_own_connection_class_and_packs_in_c(url: str, transport: type[Any]) -> None:
    cls = connect(url).connection_pool.connection_class
    assert issubclass(cls, transport)
    assert cls.pack_command is not transport.pack_command


async def test_a_real_redis_gets_the_same_values_back(redis_url: str) -> None:
    client: Redis = connect(redis_url)
    try:
        big = bytes(range(256)) * 4096  # 1 MiB, every byte value
        await client.set("pack:big", big)
        await client.set("pack:text", "héllo ✓")
        await client.set("pack:int", 10**18)
        await client.set("pack:float", 0.1)
        pipe = client.pipeline(transaction=False)
        for key in ("pack:big", "pack:text", "pack:int", "pack:float"):
            pipe.get(key)
        assert await pipe.execute() == [big, "héllo ✓".encode(), b"1000000000000000000", b"0.1"]
    finally:
        await client.aclose()
