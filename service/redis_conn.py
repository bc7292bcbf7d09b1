"""Redis clients built from settings, with short timeouts: a dead Redis must cost a fast 503, not a hang.

``REDIS_URL`` is either a plain redis-py URL (``redis://``, ``rediss://``, ``unix://``), used exactly as
redis-py and arq read it, or names a Redis Sentinel deployment::

    redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/<master-name>[/<db>]

Sentinel ports default to 26379, ``db`` to 0; an IPv6 host goes in brackets (``[::1]:26379``). The
userinfo (percent-encoded) is the ACL username / password of the *data nodes* (master and replicas), as in
a plain ``redis://`` URL; the Sentinels themselves are reached without authentication. No query string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from arq.connections import RedisSettings
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

__all__ = [
    "SENTINEL_SCHEME",
    "STORAGE_ERRORS",
    "Persistence",
    "RedisTarget",
    "RedisUrlError",
    "arq_redis_settings",
    "connect",
    "parse_redis_url",
    "persistence",
]

# What "Redis unreachable or failing" looks like from redis-py: its own errors, plus socket-level ones.
# (A Sentinel that knows no healthy master raises MasterNotFoundError, a redis ConnectionError.)
STORAGE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
PLAIN_SCHEMES = frozenset({"redis", "rediss", "unix"})
CONNECT_TIMEOUT_S = 2.0
_GRAMMAR = "redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/<master>[/<db>]"


class RedisUrlError(ValueError):
    """REDIS_URL is malformed. The message says what is wrong and never contains the URL (it may hold a
    password)."""


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where Redis is: a plain URL, or Sentinels plus the master's name (``sentinels`` is empty for a plain
    URL). The password never appears in the repr."""

    url: str = field(repr=False)
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)


def _fail(reason: str) -> RedisUrlError:
    return RedisUrlError(f"{reason}; expected {_GRAMMAR}")


def _host_port(part: str) -> tuple[str, int]:
    if not part:
        raise _fail("empty Sentinel address in the comma-separated list")
    if part.startswith("["):  # [IPv6]:port
        host, sep, rest = part[1:].partition("]")
        if not sep or not host:
            raise _fail("unclosed '[' in a Sentinel address")
        if rest and not rest.startswith(":"):
            raise _fail("unexpected text after ']' in a Sentinel address")
        port_text = rest[1:] if rest else ""
    else:
        if part.count(":") > 1:
            raise _fail("an IPv6 Sentinel address must be in brackets")
        host, _, port_text = part.partition(":")
        if not host:
            raise _fail("a Sentinel address has no host")
    if any(ch.isspace() or ch in "/?#@" for ch in host):
        raise _fail("invalid character in a Sentinel host")
    if port_text == "" and part.endswith(":"):
        raise _fail("a Sentinel address has an empty port")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _fail("a Sentinel port is not a number between 1 and 65535")
    return host, int(port_text)


def parse_redis_url(url: str) -> RedisTarget:
    """Read REDIS_URL. Plain URLs pass through unchanged (redis-py and arq parse them as before); a
    ``redis+sentinel://`` URL is taken apart. Raises ``RedisUrlError`` for a malformed one."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise RedisUrlError(f"not a URL (no '://'); expected redis://, rediss://, unix:// or {SENTINEL_SCHEME}://")
    scheme = scheme.lower()
    if scheme in PLAIN_SCHEMES:
        return RedisTarget(url=url)
    if scheme != SENTINEL_SCHEME:
        raise RedisUrlError(f"unknown scheme; expected redis://, rediss://, unix:// or {SENTINEL_SCHEME}://")
    if "?" in rest or "#" in rest:
        raise _fail("a redis+sentinel URL takes no query string or fragment")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts = netloc
    username: str | None = None
    password: str | None = None
    if at:
        user_text, colon, pass_text = userinfo.partition(":")
        if not colon:
            raise _fail("userinfo without ':' (write ':password@' or 'user:password@')")
        username = unquote(user_text) or None
        password = unquote(pass_text) or None
    if not hosts:
        raise _fail("no Sentinel address")
    sentinels = tuple(_host_port(part.strip()) for part in hosts.split(","))
    if not slash or not path:
        raise _fail("no master name")
    segments = path.split("/")
    if len(segments) > 2:
        raise _fail("too many path segments")
    master = unquote(segments[0])
    if not master or any(ch.isspace() for ch in master):
        raise _fail("empty master name or whitespace in it")
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise _fail("the database is not a non-negative integer")
        db = int(segments[1])
    return RedisTarget(url=url, sentinels=sentinels, master=master, db=db, username=username, password=password)


class _SentinelMaster(Redis):
    """The master's client; closing it also closes its Sentinels' connections."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager: Sentinel | None = getattr(self.connection_pool, "sentinel_manager", None)
        if manager is not None:
            for sentinel in manager.sentinels:
                await sentinel.aclose()


def connect(url: str, *, socket_timeout: float = 5.0) -> Redis:
    """A client for REDIS_URL. Through Sentinel, every new connection asks the Sentinels for the current
    master; a connection error (old master dead, or demoted: READONLY) drops the connection, so the next
    command after a failover reaches the new master. While no master is known the command raises
    ``MasterNotFoundError`` (a ``ConnectionError``): callers see a storage error, as with a dead Redis."""
    target = parse_redis_url(url)
    if not target.is_sentinel:
        client: Redis = Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=socket_timeout)
        return client
    assert target.master is not None
    timeouts: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_timeout": socket_timeout}
    manager = Sentinel(list(target.sentinels), **timeouts)  # type: ignore[no-untyped-call]
    master: Redis = manager.master_for(target.master, redis_class=_SentinelMaster, db=target.db,
                                       username=target.username, password=target.password, **timeouts)
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
