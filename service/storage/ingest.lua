-- One atomic step per verified delivery: dedup mark, event record, arq job + queue entry, audit entry.
-- Either all of it is written or none of it (Redis runs a script to completion; with AOF the script's
-- effects are logged as one unit).
--
-- KEYS: 1 dedup  2 event  3 arq job  4 arq queue  5 inflight  6 dead letters  7 audit stream  8 audit head
--       9 console index prefix
-- ARGV: 1 wanted (queued|ignored|dead_lettered|invalid_json|invalid_event)  2 event id  3 dedup ttl s
--       4 now ms  5 job id  6 job json  7 job expiry ms  8 retention s (ignored)  9 retention s (dead)
--       10 type  11 created  12 request id  13 secret index  14 header  15 body  16 digest  17 reason

local wanted = ARGV[1]
local now = ARGV[4]
local outcome = wanted

if wanted == 'queued' or wanted == 'ignored' or wanted == 'dead_lettered' then
  local state = redis.call('HGET', KEYS[2], 'state')
  if state == 'queued' or state == 'processing' or state == 'retrying' then
    -- Still being worked on after its dedup mark expired: never run an event twice at once.
    outcome = 'duplicate'
  elseif not redis.call('SET', KEYS[1], now, 'NX', 'EX', ARGV[3]) then
    outcome = 'duplicate'
  end
end

-- The audit entry first, so the record can name it (the console shows an event's entry) in its own write.
local head = redis.call('HMGET', KEYS[8], 'seq', 'hash')
local seq = tonumber(head[1] or '0') + 1
local prev = head[2] or '0000000000000000000000000000000000000000'
local hash = redis.sha1hex(prev .. '\n' .. seq .. '\n' .. outcome .. '\n' .. ARGV[16])
local audit_id = redis.call('XADD', KEYS[7], '*',
  'seq', seq, 'prev', prev, 'hash', hash, 'outcome', outcome, 'event_id', ARGV[2],
  'received_ms', now, 'request_id', ARGV[12], 'secret_index', ARGV[13],
  'header', ARGV[14], 'body', ARGV[15], 'digest', ARGV[16])
redis.call('HSET', KEYS[8], 'seq', seq, 'hash', hash)

local stored = outcome == 'queued' or outcome == 'ignored' or outcome == 'dead_lettered'
if stored then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2],
    'id', ARGV[2], 'type', ARGV[10], 'created', ARGV[11], 'body', ARGV[15], 'state', outcome,
    'generation', '0', 'attempts', '0', 'received_ms', now, 'updated_ms', now,
    'request_id', ARGV[12], 'secret_index', ARGV[13], 'audit_id', audit_id)
  if outcome == 'queued' then
    redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[7])
    redis.call('ZADD', KEYS[4], now, ARGV[5])
    redis.call('ZADD', KEYS[5], now, ARGV[2])
  elseif outcome == 'ignored' then
    redis.call('EXPIRE', KEYS[2], ARGV[8])
  else
    redis.call('HSET', KEYS[2], 'reason', ARGV[17], 'last_error', ARGV[17])
    redis.call('ZADD', KEYS[6], now, ARGV[2])
    redis.call('EXPIRE', KEYS[2], ARGV[9])
  end
end

-- Console indexes (service.storage.event_index; keys.py says what each costs): the id, type and state
-- indexes, and when the record expires. Kept to three commands: the ingest path's budget for them is
-- 5 % (docs/BENCHMARKS.md).
if stored then
  local ix, id = KEYS[9], ARGV[2]
  redis.call('ZADD', ix .. 'ids', 0, id)
  redis.call('ZADD', ix .. 'type:' .. ARGV[10], now, id)
  redis.call('ZADD', ix .. 'state:' .. outcome, now, id)
  if outcome ~= 'queued' then
    local ttl = outcome == 'ignored' and ARGV[8] or ARGV[9]
    redis.call('ZADD', ix .. 'expiry', tonumber(now) + tonumber(ttl) * 1000, id .. ' ' .. ARGV[10])
  end
end
return outcome
