"""The console's indexes: the Lua the state-changing scripts share, and the sweep's trim of expired entries.

The writes live inside the scripts that change state (``ingest.lua``, the scripts of ``records.py``), in a
separate block after their checks, so an index can never disagree with the record it indexes. What each
key holds and costs is in ``keys.py``.
"""

from __future__ import annotations

from redis.asyncio import Redis
from runinfra_webhooks.service.storage import keys

__all__ = ["HISTORY_MAX_BYTES", "INDEX_LUA", "STATES", "trim_expired"]

STATES = ("queued", "processing", "retrying", "succeeded", "dead_lettered", "ignored")

# The history field keeps the newest transitions within this many bytes (~45 entries): a poison event
# retried forever cannot grow its record without bound.
HISTORY_MAX_BYTES = 4096

# Helpers prepended to every script that changes state. ``prefix`` is keys.CONSOLE_INDEX, passed as a key.
INDEX_LUA = f"""
local function ix_history(ekey, now, state, attempt, generation, err)
  local entry = '{{"at":' .. now .. ',"state":"' .. state .. '","attempt":' .. (attempt or 0)
    .. ',"generation":' .. (generation or 0) .. ',"error":' .. cjson.encode(err or '') .. '}}'
  local h = redis.call('HGET', ekey, 'history')
  if h then
    h = h .. '\\n' .. entry
    if #h > {HISTORY_MAX_BYTES} then
      local cut = string.find(h, '\\n', #h - {HISTORY_MAX_BYTES}, true)
      if cut then h = string.sub(h, cut + 1) end
    end
  else
    h = entry
  end
  redis.call('HSET', ekey, 'history', h)
end

local function ix_move(prefix, id, from, to, received)
  if from ~= to then
    if from then redis.call('ZREM', prefix .. 'state:' .. from, id) end
    redis.call('ZADD', prefix .. 'state:' .. to, received, id)
  end
end

local function ix_expires(prefix, id, event_type, now, ttl_s)
  redis.call('ZADD', prefix .. 'expiry', tonumber(now) + tonumber(ttl_s) * 1000, id .. ' ' .. event_type)
end
"""

# KEYS: 1 expiry zset, 2 index prefix. ARGV: 1 now ms, 2 limit, 3 event key prefix, 4.. every state.
# A due entry whose record still exists (its TTL was renewed, or the id was received again) is re-dated or
# dropped, and the id is left only in its current state's index (a re-used id's old state entry goes);
# otherwise the event is gone and so are its entries in every index.
_TRIM = """
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2])
local removed = 0
for _, member in ipairs(due) do
  local sp = string.find(member, ' ', 1, true)
  local id, event_type = string.sub(member, 1, sp - 1), string.sub(member, sp + 1)
  local pttl = redis.call('PTTL', ARGV[3] .. id)
  if pttl ~= -2 then
    if pttl > 0 then
      redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + pttl, member)
    else
      redis.call('ZREM', KEYS[1], member)
    end
    local state = redis.call('HGET', ARGV[3] .. id, 'state')
    for i = 4, #ARGV do
      if ARGV[i] ~= state then redis.call('ZREM', KEYS[2] .. 'state:' .. ARGV[i], id) end
    end
  else
    redis.call('ZREM', KEYS[2] .. 'ids', id)
    redis.call('ZREM', KEYS[2] .. 'type:' .. event_type, id)
    for i = 4, #ARGV do redis.call('ZREM', KEYS[2] .. 'state:' .. ARGV[i], id) end
    redis.call('ZREM', KEYS[1], member)
    removed = removed + 1
  end
end
return removed
"""


async def trim_expired(redis: Redis, now_ms: int, *, limit: int = 1000, rounds: int = 20) -> int:
    """Drop index entries of events whose record expired; returns how many events were dropped.

    At most ``limit`` entries per script run (Redis is busy for well under a millisecond per run), and at
    most ``rounds`` runs per sweep: a backlog is worked off over a few sweeps.
    """
    trim = redis.register_script(_TRIM)
    total = 0
    for _ in range(rounds):
        removed = int(await trim(keys=[keys.IX_EXPIRY, keys.CONSOLE_INDEX],
                                 args=[now_ms, limit, keys.event(""), *STATES]))
        total += removed
        if removed < limit:
            return total
    return total
