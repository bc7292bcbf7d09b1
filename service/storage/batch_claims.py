"""Claims on the batches of one build, so that several jobs (on several workers) can share it.

A claim is a lease: field ``<batch>`` of ``corpus_claims(collection, revision)`` holds ``<expiry ms>:<owner>``
until the batch's bit in the build's progress bitmap is set. Field ``next`` is a cursor: every batch below it that
is not done has a lease field, so a claim costs O(1) while the cursor has batches ahead; past the end, a
claim takes a batch whose lease expired (its holder died) or reports that others hold the rest. A batch given
back (its work failed) moves the cursor back to it, so it is the next one claimed.

Time is Redis's own (``TIME``), so workers on hosts with skewed clocks agree on when a lease ends.
"""

from __future__ import annotations

from redis.asyncio import Redis

__all__ = ["ALL_DONE", "CHANGED", "CLAIM_SCRIPT", "HELD", "RELEASE_SCRIPT", "BatchClaims"]

HELD = -1  # no batch to claim now, but some are leased to others and not done yet
ALL_DONE = -2  # every batch is done
CHANGED = -3  # the build is no longer the one asked about (a load, a restart, the flip)

# KEYS: corpus meta, progress bitmap, claims. ARGV: build field, its marker, batches, lease ms, owner,
# the batch this owner just finished (its claim is dropped) or -1.
CLAIM_SCRIPT = """
local n, lease, finished = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6])
if not n or not lease or not finished or n < 0 or lease <= 0 or ARGV[5] == '' then
  return redis.error_reply('corpus.claim: bad arguments')
end
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return -3 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local value = (now + lease) .. ':' .. ARGV[5]
if finished >= 0 then redis.call('HDEL', KEYS[3], tostring(finished)) end
local nxt = tonumber(redis.call('HGET', KEYS[3], 'next') or '0') or 0
while nxt < n do
  local i = nxt
  nxt = nxt + 1
  if redis.call('GETBIT', KEYS[2], i) == 0 then
    local held_by = redis.call('HGET', KEYS[3], tostring(i))
    if not held_by or (tonumber(string.match(held_by, '^(%d+):') or '0') or 0) <= now then
      redis.call('HSET', KEYS[3], 'next', nxt, tostring(i), value)
      return i
    end
  end
end
redis.call('HSET', KEYS[3], 'next', nxt)
local held = 0
local claims = redis.call('HGETALL', KEYS[3])
for j = 1, #claims, 2 do
  local i = tonumber(claims[j])
  if claims[j] ~= 'next' and i then
    if redis.call('GETBIT', KEYS[2], i) == 1 then
      redis.call('HDEL', KEYS[3], claims[j])
    else
      local expiry = tonumber(string.match(claims[j + 1], '^(%d+):') or '0')
      if expiry <= now then
        redis.call('HSET', KEYS[3], claims[j], value)
        return i
      end
      held = held + 1
    end
  end
end
if held > 0 then return -1 end
return -2
"""

# KEYS: claims. ARGV: owner. Ends every lease of the owner (its attempt is over, or one of its batches failed)
# and moves the cursor back to the lowest, so the next claim takes them first (batches run in order, as far as
# they can). A claim whose reply was lost (a cancelled call) is released too.
RELEASE_SCRIPT = """
if ARGV[1] == '' then return redis.error_reply('corpus.release: bad arguments') end
local claims = redis.call('HGETALL', KEYS[1])
local low, released = nil, 0
for j = 1, #claims, 2 do
  local i = tonumber(claims[j])
  if claims[j] ~= 'next' and i and string.match(claims[j + 1], ':(.*)$') == ARGV[1] then
    redis.call('HDEL', KEYS[1], claims[j])
    if not low or i < low then low = i end
    released = released + 1
  end
end
if low and low < (tonumber(redis.call('HGET', KEYS[1], 'next') or '0') or 0) then
  redis.call('HSET', KEYS[1], 'next', low)
end
return released
"""


class BatchClaims:
    """The claim and release scripts, registered once per Redis client."""

    def __init__(self, redis: Redis) -> None:
        self._claim = redis.register_script(CLAIM_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)

    async def claim(self, *, meta: str, progress: str, claims: str, field: str, marker: str, batches: int,
                    lease_ms: int, owner: str, finished: int = -1) -> int:
        """A batch index leased to ``owner`` for ``lease_ms``, or ``HELD``, ``ALL_DONE``, ``CHANGED``."""
        result = await self._claim(keys=[meta, progress, claims],
                                   args=[field, marker, batches, lease_ms, owner, finished])
        return int(result)

    async def release(self, *, claims: str, owner: str) -> int:
        """Give back every batch ``owner`` holds (its work failed or ended); returns how many."""
        return int(await self._release(keys=[claims], args=[owner]))
