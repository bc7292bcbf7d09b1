"""Sorting Redis failures: worth retrying later (Redis is busy, full, loading, failing over, unreachable) or
never (one of our scripts refused its input or failed: the same input fails again).

The project's scripts check their input before their first write and refuse bad input with an error reply
that starts with the script's name (``ingest: ...``, ``records.start: ...``); a Lua runtime error carries the
script's SHA-1, which ``script_names`` maps back to a name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["RedisFailure", "classify", "script_names"]

# Error codes Redis sends while it cannot take a write now but will later. MISCONF: it cannot persist (a
# full disk) and refuses writes until it can.
_TRANSIENT_CODES = frozenset({"OOM", "BUSY", "LOADING", "READONLY", "MASTERDOWN", "NOREPLICAS", "TRYAGAIN",
                              "CLUSTERDOWN", "MISCONF", "EXECABORT"})
_OWN = re.compile(r"^(?:ERR )?(ingest|records\.[a-z_]+|deployments\.[a-z_]+|audit\.[a-z_]+): ")
_SHA = re.compile(r"script: ([0-9a-f]{40})")


@dataclass(frozen=True, slots=True)
class RedisFailure:
    transient: bool
    code: str  # redis_unavailable | redis_busy (and the other codes, lowercased) | script_error:<name>
    detail: str


def script_names(named: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """``{sha1 of the script text: name}`` for mapping a runtime error back to the script that raised it."""
    items = named.items() if isinstance(named, Mapping) else named
    return {hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest(): name for name, text in items}


def classify(exc: BaseException, names: Mapping[str, str] | None = None) -> RedisFailure | None:
    """How to treat ``exc`` if it is a Redis failure; None when it is not one."""
    detail = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    if isinstance(exc, OutOfMemoryError):
        return RedisFailure(True, "redis_oom", detail)
    if isinstance(exc, ReadOnlyError):
        return RedisFailure(True, "redis_readonly", detail)
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError | TimeoutError):
        return RedisFailure(True, "redis_unavailable", detail)  # BusyLoadingError (LOADING) is one of these
    if isinstance(exc, ResponseError):
        text = str(exc)
        code = text.split(" ", 1)[0]
        if code in _TRANSIENT_CODES:
            return RedisFailure(True, f"redis_{code.lower()}", detail)
        own = _OWN.match(text)
        if own:
            return RedisFailure(False, f"script_error:{own.group(1)}", detail)
        sha = _SHA.search(text)
        if sha or "user_script:" in text:
            name = (names or {}).get(sha.group(1), "unknown") if sha else "unknown"
            return RedisFailure(False, f"script_error:{name}", detail)
        return RedisFailure(True, "redis_error", detail)
    if isinstance(exc, RedisError):
        return RedisFailure(True, "redis_error", detail)
    return None
