"""``RUNINFRA_VECTOR_STORE``: which store holds the vectors, parsed once at start-up (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

__all__ = ["StoreUrl", "parse_store_url"]

_USAGE = "expected 'redis', 'qdrant+http://host:port', 'qdrant+https://host:port' or 'qdrant+path:///absolute/dir'"


@dataclass(frozen=True, slots=True)
class StoreUrl:
    """``kind``: ``redis`` (the service's Redis), ``qdrant-http`` (a server or cluster at ``location``, an
    http(s) URL) or ``qdrant-path`` (embedded mode, ``location`` an absolute directory)."""

    kind: Literal["redis", "qdrant-http", "qdrant-path"]
    location: str = ""


def parse_store_url(value: str) -> StoreUrl:
    """Parse the setting; ValueError (whose message never repeats the value) when it is not one of the forms."""
    text = value.strip()
    if text == "redis":
        return StoreUrl("redis")
    if text.startswith("qdrant+path://"):
        path = text.removeprefix("qdrant+path://")
        if not path.startswith("/") or path.strip("/") == "":
            msg = f"qdrant+path needs an absolute directory other than /; {_USAGE}"
            raise ValueError(msg)
        return StoreUrl("qdrant-path", path.rstrip("/"))
    if text.startswith(("qdrant+http://", "qdrant+https://")):
        http = text.removeprefix("qdrant+")
        parts = urlsplit(http)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if not parts.hostname or port == -1 or parts.username or parts.password or parts.query or parts.fragment:
            msg = f"qdrant+http(s) needs a host, an optional port, no credentials or query; {_USAGE}"
            raise ValueError(msg)
        return StoreUrl("qdrant-http", http.rstrip("/"))
    raise ValueError(_USAGE)
