"""REDIS_URL, read: a plain redis-py URL, or a Redis Sentinel deployment. Pure; connecting is redis_conn's.

A plain URL (``redis://``, ``rediss://``, ``unix://``) is used exactly as redis-py and arq read it. A
Sentinel deployment is named by::

    redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/<master-name>[/<db>]

Sentinel ports default to 26379, ``db`` to 0; an IPv6 host goes in brackets (``[::1]:26379``). The
userinfo (percent-encoded) is the ACL username / password of the *data nodes* (master and replicas), as in
a plain ``redis://`` URL; the Sentinels themselves are reached without authentication. No query string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote

__all__ = ["SENTINEL_SCHEME", "RedisTarget", "RedisUrlError", "parse_redis_url"]

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
PLAIN_SCHEMES = frozenset({"redis", "rediss", "unix"})
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
