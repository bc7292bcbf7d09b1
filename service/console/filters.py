"""Query parameters of the event list (pages and API) into an ``EventFilter``, with a clear error when bad."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from runinfra_webhooks.service.storage.event_index import STATES
from runinfra_webhooks.service.storage.listing import EventFilter

__all__ = ["FilterError", "parse_filter", "parse_time"]

_TYPE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")
_ID_PREFIX = re.compile(r"^[!-~]{1,255}$")  # printable ASCII without whitespace, like event ids


class FilterError(ValueError):
    """A filter value that cannot mean anything; the message names the parameter."""


def parse_time(name: str, value: str) -> int:
    """ISO 8601 (a naive time is UTC) or Unix seconds, to Unix milliseconds."""
    text = value
    if re.fullmatch(r"\d{1,12}", text):
        return int(text) * 1000
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        msg = f"{name}: not ISO 8601 or Unix seconds"
        raise FilterError(msg) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _text(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or not isinstance(value, str | int):
        if value is not None:
            msg = f"{name}: must be a string"
            raise FilterError(msg)
        return None
    text = str(value)  # not stripped: " " is a bad value, only "" means "no filter" (as a form sends it)
    return text or None


def parse_filter(params: Mapping[str, Any]) -> EventFilter:
    state, type_, q = _text(params, "state"), _text(params, "type"), _text(params, "q")
    since, until = _text(params, "since"), _text(params, "until")
    if state is not None and state not in STATES:
        msg = f"state: one of {', '.join(STATES)}"
        raise FilterError(msg)
    if type_ is not None and not _TYPE.match(type_):
        msg = "type: dot-separated lowercase words"
        raise FilterError(msg)
    if q is not None and not _ID_PREFIX.match(q):
        msg = "q: an event id prefix (printable ASCII, no spaces, at most 255 characters)"
        raise FilterError(msg)
    since_ms = parse_time("since", since) if since else None
    until_ms = parse_time("until", until) if until else None
    if since_ms is not None and until_ms is not None and since_ms > until_ms:
        msg = "since: after until"
        raise FilterError(msg)
    return EventFilter(state=state, type=type_, since_ms=since_ms, until_ms=until_ms, q=q)
