"""Lua scripts (and plain commands) of concurrent callers, sent together: one pipelined round trip for all
that are pending.

redis-py's per-call path (pool checkout with its readability check, packing, one write and one read, a
wake-up) costs far more client CPU than a small script costs Redis. Under load the receiver has dozens of
deliveries, and a worker dozens of jobs, waiting on Redis at once; here the calls that arrive while a round
trip is in flight wait for it to end and then go together as one redis-py pipeline (``transaction=False``,
so no MULTI) on one connection.

Each call is still its own atomic script run with its own reply, and its caller is answered only after
that reply arrived; an error reply fails only its own call (``raise_on_error=False``). A script Redis does
not know (restart, failover, SCRIPT FLUSH) is loaded once and only the calls that did not run are resent.

One ``Coalescer`` belongs to one event loop (its pending batch and flusher task live there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

__all__ = ["CoalescedScript", "Coalescer"]


class _Call:
    """A script run (``script`` set) or a plain command (``args`` = name and arguments), and its caller."""

    __slots__ = ("args", "future", "numkeys", "script")

    def __init__(self, script: CoalescedScript | None, numkeys: int, args: tuple[Any, ...],
                 future: asyncio.Future[Any]) -> None:
        self.script = script
        self.numkeys = numkeys
        self.args = args
        self.future = future


class CoalescedScript:
    """A registered script; call it like redis-py's ``register_script`` result: ``await s(keys=[...], args=[...])``."""

    __slots__ = ("_coalescer", "sha", "text")

    def __init__(self, coalescer: Coalescer, text: str, sha: str) -> None:
        self._coalescer = coalescer
        self.text = text
        self.sha = sha

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        return await self._coalescer.run(self, len(keys), (*keys, *args))


class Coalescer:
    def __init__(self, redis: Redis, *, timeout: float | None = None) -> None:
        """``timeout`` bounds each round trip as a whole, for a client made without a per-read socket timeout
        (redis-py then arms no timer per reply); a round trip past it fails its calls with ``TimeoutError``."""
        self._redis = redis
        self._timeout = timeout
        self._scripts: dict[str, CoalescedScript] = {}
        self._pending: list[_Call] = []
        self._flusher: asyncio.Task[None] | None = None

    def script(self, text: str) -> CoalescedScript:
        """The script for ``text``, registered once (its SHA-1 computed once, not per call)."""
        found = self._scripts.get(text)
        if found is None:
            found = self._scripts[text] = CoalescedScript(self, text, AsyncScript(self._redis, text).sha)
        return found

    async def run(self, script: CoalescedScript, numkeys: int, args: tuple[Any, ...]) -> Any:
        """Run ``script`` with KEYS = ``args[:numkeys]``, ARGV = the rest; raises what redis-py raises."""
        return await self._enqueue(script, numkeys, args)

    async def command(self, *args: Any) -> Any:
        """A plain command (``"SMEMBERS", key``) in the same round trip; its reply parsed as redis-py does."""
        return await self._enqueue(None, 0, args)

    async def _enqueue(self, script: CoalescedScript | None, numkeys: int, args: tuple[Any, ...]) -> Any:
        loop = asyncio.get_running_loop()
        call = _Call(script, numkeys, args, loop.create_future())
        self._pending.append(call)
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        return await call.future

    async def _flush(self) -> None:
        """Send what is pending as one pipelined round trip, again until nothing is pending."""
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    replies = await self._round_trip(batch)
                except Exception as exc:
                    for c in batch:
                        if not c.future.done():
                            c.future.set_exception(exc)
                    continue
                except BaseException:  # cancelled (loop shutting down): nobody will answer these
                    for c in (*batch, *self._pending):
                        c.future.cancel()
                    self._pending = []
                    raise
                for c, reply in zip(batch, replies, strict=True):
                    if c.future.done():
                        continue
                    if isinstance(reply, Exception):
                        c.future.set_exception(reply)
                    else:
                        c.future.set_result(reply)
        finally:
            self._flusher = None

    async def _round_trip(self, calls: list[_Call]) -> list[Any]:
        if self._timeout is None:
            return await self._send(calls)
        async with asyncio.timeout(self._timeout):
            return await self._send(calls)

    async def _send(self, calls: list[_Call], *, reload: bool = True) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for c in calls:
            if c.script is None:
                pipe.execute_command(*c.args)
            else:
                pipe.evalsha(c.script.sha, c.numkeys, *c.args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing and reload:
            # Redis restarted or was flushed: load each missing script once, resend only those (they did not run).
            for text in {script.text for i in missing if (script := calls[i].script) is not None}:
                await self._redis.script_load(text)
            again = await self._send([calls[i] for i in missing], reload=False)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies
