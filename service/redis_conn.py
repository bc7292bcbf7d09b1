"""Redis clients built from settings, with short timeouts: a dead Redis must cost a fast 503, not a hang."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ["STORAGE_ERRORS", "Persistence", "connect", "persistence"]

# What "Redis unreachable or failing" looks like from redis-py: its own errors, plus socket-level ones.
STORAGE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


def connect(url: str, *, socket_timeout: float = 5.0) -> Redis:
    client: Redis = Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=socket_timeout)
    return client


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
