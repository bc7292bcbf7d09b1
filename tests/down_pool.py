"""A stand-in for arq's Redis pool while Redis is unreachable, to drive a worker's Redis-facing code."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["DownPool"]


class DownPool:
    """Every command fails as redis-py fails on a refused connection, so a test also sees whether Redis was
    asked at all."""

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1: Connection refused.")

        return fail
