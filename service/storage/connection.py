"""Redis clients built from settings, with short timeouts: a dead Redis must cost a fast 503, not a hang.

REDIS_URL names one Redis or a Sentinel deployment (``service.redis_url``); both give the same client API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import hiredis
from arq.connections import RedisSettings
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from runinfra_webhooks.service.storage.redis_url import parse_redis_url

__all__ = [
    "COMMAND_TIMEOUT_S", "STORAGE_ERRORS", "Persistence", "arq_redis_settings", "connect", "pack_in_c", "persistence",
]

CONNECT_TIMEOUT_S = 2.0

# What "Redis unreachable or failing" looks like from redis-py: its own errors, plus socket-level ones.
# (A Sentinel that knows no healthy master raises MasterNotFoundError, a redis ConnectionError.)
STORAGE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


class _HiredisPacking:
    """Commands packed by hiredis in C instead of redis-py's Python loop (redis-py's asyncio connections never
    use hiredis for packing). An argument hiredis refuses (bool, bytearray, None) goes through redis-py's
    own packer, so the error a caller sees is redis-py's ``DataError``, as before."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            packed: list[bytes] = super().pack_command(*args)  # type: ignore[misc]
            return packed


_PACKING_IN_C: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def pack_in_c(pool: ConnectionPool) -> None:
    """Make the pool's future connections pack in C, whatever transport (TCP, TLS, unix, Sentinel) it uses."""
    cls = pool.connection_class
    if issubclass(cls, _HiredisPacking):
        return
    if cls not in _PACKING_IN_C:
        _PACKING_IN_C[cls] = type(f"HiredisPacked{cls.__name__}", (_HiredisPacking, cls), {})
    pool.connection_class = _PACKING_IN_C[cls]


class _SentinelMaster(Redis):
    """The master's client; closing it also closes its Sentinels' connections."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager: Sentinel | None = getattr(self.connection_pool, "sentinel_manager", None)
        if manager is not None:
            for sentinel in manager.sentinels:
                await sentinel.aclose()


COMMAND_TIMEOUT_S = 5.0


def connect(url: str, *, socket_timeout: float | None = COMMAND_TIMEOUT_S) -> Redis:
    """A client for REDIS_URL. Through Sentinel, every new connection asks the Sentinels for the current
    master; a connection error (old master dead, or demoted: READONLY) drops the connection, so the next
    command after a failover reaches the new master. While no master is known the command raises
    ``MasterNotFoundError`` (a ``ConnectionError``): callers see a storage error, as with a dead Redis.

    ``socket_timeout=None`` leaves every read unbounded: the caller bounds each call itself."""
    target = parse_redis_url(url)
    if not target.is_sentinel:
        client: Redis = Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=socket_timeout)
        pack_in_c(client.connection_pool)
        return client
    assert target.master is not None
    timeouts: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_timeout": socket_timeout}
    manager = Sentinel(list(target.sentinels), **timeouts)  # type: ignore[no-untyped-call]
    master: Redis = manager.master_for(target.master, redis_class=_SentinelMaster, db=target.db,
                                       username=target.username, password=target.password, **timeouts)
    pack_in_c(master.connection_pool)
    return master


def arq_redis_settings(url: str) -> RedisSettings:
    """arq's connection settings for REDIS_URL: a plain URL exactly as ``RedisSettings.from_dsn`` reads it;
    a Sentinel URL as arq's own Sentinel mode (``sentinel=True``: arq builds ``Sentinel(hosts).master_for``).

    arq 0.28 passes only db, username and password to its Sentinel client, so in Sentinel mode its
    ``conn_timeout`` is not applied (connections to a dead host on the LAN fail at once; a black-holed one
    waits for the OS connect timeout)."""
    target = parse_redis_url(url)
    if not target.is_sentinel:
        return RedisSettings.from_dsn(url)
    assert target.master is not None
    return RedisSettings(host=list(target.sentinels), sentinel=True, sentinel_master=target.master,
                         database=target.db, username=target.username, password=target.password,
                         conn_timeout=int(CONNECT_TIMEOUT_S))


@dataclass(frozen=True, slots=True)
class Persistence:
    aof: bool | None
    rdb: bool | None
    appendfsync: str | None

    @property
    def warning(self) -> str | None:
        if self.aof is None:
            return "Redis persistence unknown (CONFIG GET refused): make sure AOF or RDB is on"
        if not self.aof and not self.rdb:
            return "Redis persistence is off: a Redis restart loses acknowledged events"
        if not self.aof:
            return "Redis AOF is off: a Redis crash loses events acknowledged since the last RDB snapshot"
        return None

    def as_json(self) -> dict[str, object]:
        return {"aof": self.aof, "rdb": self.rdb, "appendfsync": self.appendfsync, "warning": self.warning}


async def persistence(redis: Redis) -> Persistence:
    try:
        aof = await redis.config_get("appendonly")
        save = await redis.config_get("save")
        fsync = await redis.config_get("appendfsync")
    except RedisError:
        return Persistence(None, None, None)

    def val(d: dict[bytes | str, bytes | str], key: str) -> str:
        v = d.get(key) or d.get(key.encode()) or b""
        return v.decode() if isinstance(v, bytes) else v

    return Persistence(val(aof, "appendonly") == "yes", val(save, "save") != "", val(fsync, "appendfsync") or None)
