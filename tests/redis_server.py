"""A redis-server of the test's own, on a free port in a temp dir, that tests may stop, kill and restart."""

from __future__ import annotations

import builtins
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, cast

import redis as sync_redis
from redis import asyncio as async_redis
from redis.client import Pipeline


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# What the server takes as a key name: snapshots pass back the bytes names that KEYS answered.
Key = str | bytes


class Db(Protocol):
    """The synchronous client's commands that tests read state with, typed as they answer (bytes, as no
    client here sets ``decode_responses``).

    redis-py declares one signature per command for its synchronous and asyncio clients alike, returning
    ``Awaitable[Any] | Any``, which a caller can neither compare, iterate nor index without a cast."""

    def get(self, name: Key) -> bytes | None: ...
    def set(self, name: str, value: str | bytes) -> bool | None: ...
    def type(self, name: Key) -> bytes: ...
    def keys(self, pattern: str = "*") -> list[bytes]: ...
    def exists(self, *names: str) -> int: ...
    def delete(self, *names: str) -> int: ...
    def ttl(self, name: str) -> int: ...
    def pexpire(self, name: str, time: int) -> bool: ...
    def dbsize(self) -> int: ...
    def info(self, section: str) -> dict[str, Any]: ...
    def config_set(self, name: str, value: str) -> bool: ...
    def memory_purge(self) -> bool: ...
    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> object: ...
    def scan_iter(self, match: str | None = None, count: int | None = None) -> Iterator[bytes]: ...
    def hget(self, name: str, key: str) -> bytes | None: ...

    def bitcount(self, name: str) -> int: ...
    def hset(self, name: str, key: str | None = None, value: str | bytes | None = None,
             mapping: Mapping[str, str | bytes | int] | None = None) -> int: ...
    def hgetall(self, name: Key) -> dict[bytes, bytes]: ...
    def lrange(self, name: Key, start: int, end: int) -> list[bytes]: ...
    def smembers(self, name: Key) -> builtins.set[bytes]: ...  # ``set`` here is the command
    def sismember(self, name: str, value: str) -> int: ...
    def zadd(self, name: str, mapping: Mapping[str, float]) -> int: ...
    def zcard(self, name: str) -> int: ...
    def zscore(self, name: str, value: str) -> float | None: ...
    def zrange(self, name: Key, start: int, end: int,
               withscores: bool = False) -> list[bytes] | list[tuple[bytes, float]]: ...
    def zrem(self, name: str, *values: str) -> int: ...
    def xlen(self, name: str) -> int: ...
    def xrange(self, name: Key, min: str = "-", max: str = "+") -> list[tuple[bytes, dict[bytes, bytes]]]: ...
    def xadd(self, name: str, fields: Mapping[bytes, bytes] | Mapping[str, str], id: str | bytes = "*") -> bytes: ...
    def xdel(self, name: str, *ids: str) -> int: ...
    def xtrim(self, name: str, maxlen: int | None = None, approximate: bool = True,
              minid: str | None = None) -> int: ...
    def pipeline(self, transaction: bool = True) -> Pipeline: ...
    def close(self) -> None: ...


def as_db(client: sync_redis.Redis) -> Db:
    """``client`` seen through ``Db``: the same object, with the types its commands really return."""
    return cast(Db, client)


class AsyncDb(Protocol):
    """``Db`` for the asyncio client, for the commands redis-py declares with a precise reply (such as
    ``Awaitable[dict] | dict``), which cannot be awaited as declared; the ones declared ``Awaitable[Any] | Any``
    can, so they are not here."""

    async def hget(self, name: str, key: str) -> bytes | None: ...
    async def hgetall(self, name: str) -> dict[bytes, bytes]: ...
    async def hset(self, name: str, key: str, value: str) -> int: ...
    async def lrange(self, name: str, start: int, end: int) -> list[bytes]: ...
    async def sadd(self, name: str, *values: str) -> int: ...


def as_async_db(client: async_redis.Redis) -> AsyncDb:
    """``client`` seen through ``AsyncDb``: the same object, with the types its commands really return."""
    return cast(AsyncDb, client)


class RedisServer:
    def __init__(self, directory: Path, *, appendonly: bool = False, port: int | None = None) -> None:
        self.dir = directory
        self.port = port or free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> sync_redis.Redis:
        return sync_redis.Redis(host="127.0.0.1", port=self.port)

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return
            except sync_redis.exceptions.RedisError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL: no shutdown save; only what AOF already has survives."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and writes are accepted by the kernel, but nothing is answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 0)
            alive.append(pid)
    return alive
