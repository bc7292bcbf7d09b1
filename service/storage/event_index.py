"""The console's indexes: the Lua the state-changing scripts share, and the sweep's trim of expired entries.

The writes live inside the scripts that change state (``ingest.lua``, the scripts of ``records.py``), in a
separate block after their checks, so an index can never disagree with the record it indexes. What each
key holds and costs is in ``keys.py``.
"""

from __future__ import annotations

from redis.asyncio import Redis

from runinfra_webhooks.service.storage import keys

__all__ = ["HISTORY_MAX_BYTES", "INDEX_LUA", "STATES", "needs_rebuild", "rebuild", "trim_expired"]

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
    redis.call('ZADD', prefix .. 'state:' .. to, received or 0, id)
  end
end

local function ix_expires(prefix, id, event_type, now, ttl_s)
  redis.call('ZADD', prefix .. 'expiry', tonumber(now) + tonumber(ttl_s) * 1000, id .. ' ' .. (event_type or ''))
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


# KEYS: 1 index prefix. ARGV: 1 event key prefix, 2 now ms, 3.. event ids. Indexes records as they are now,
# each in one atomic step, so a transition running meanwhile cannot leave a stale entry behind.
_REINDEX = """
local n = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local ekey = ARGV[1] .. id
  local r = redis.call('HMGET', ekey, 'state', 'type', 'received_ms')
  if r[1] and r[2] and r[3] then
    redis.call('ZADD', KEYS[1] .. 'ids', 0, id)
    redis.call('ZADD', KEYS[1] .. 'type:' .. r[2], r[3], id)
    redis.call('ZADD', KEYS[1] .. 'state:' .. r[1], r[3], id)
    redis.call('SADD', KEYS[1] .. 'types', r[2])
    local pttl = redis.call('PTTL', ekey)
    if pttl > 0 then redis.call('ZADD', KEYS[1] .. 'expiry', tonumber(ARGV[2]) + pttl, id .. ' ' .. r[2]) end
    n = n + 1
  end
end
return n
"""


async def needs_rebuild(redis: Redis) -> bool:
    """Records exist but the id index is empty: they were written before the console's indexes."""
    if await redis.exists(keys.IX_IDS):
        return False
    _, found = await redis.scan(0, match=keys.event("*"), count=1000)
    return bool(found)


async def rebuild(redis: Redis, now_ms: int, *, batch: int = 500) -> int:
    """Index every stored record (one SCAN over the records, for data written before the indexes existed);
    returns how many were indexed. Safe to run again and while events arrive."""
    script = redis.register_script(_REINDEX)
    prefix = keys.event("")
    total, cursor = 0, 0
    while True:
        cursor, names = await redis.scan(cursor, match=prefix + "*", count=batch)
        ids = [n.decode("utf-8", "replace")[len(prefix):] for n in names]
        if ids:
            total += int(await script(keys=[keys.CONSOLE_INDEX], args=[prefix, now_ms, *ids]))
        if cursor == 0:
            return total
