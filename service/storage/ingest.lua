-- One atomic step per verified delivery: dedup mark, event record, arq job + queue entry, audit entry.
-- Either all of it is written or none of it (Redis runs a script to completion; with AOF the script's
-- effects are logged as one unit). Everything that can fail is checked first, in the validation block:
-- once the first write ran, no later command can fail (Redis refuses a script for lack of memory, or on a
-- read-only replica, only at its first write).
--
-- KEYS: 1 dedup  2 event  3 arq job  4 arq queue  5 inflight  6 dead letters  7 audit stream  8 audit head
--       9 audit body (content-addressed copy of a duplicate's body)  10 console index prefix
-- ARGV: 1 wanted (queued|ignored|dead_lettered|invalid_json|invalid_event)  2 event id  3 dedup ttl s
--       4 now ms  5 job id  6 job json  7 job expiry ms  8 retention s (ignored)  9 retention s (dead)
--       10 type  11 created  12 request id  13 secret index  14 header  15 body  16 digest  17 reason
--       18 delivery id  19 entry MAC if the outcome is the wanted one  20 entry MAC if it is a duplicate
--       21 body sha256 (hex)  22 audit body ttl ms (0: a duplicate keeps its body inline)
--       23 traceparent (the receiver's span, W3C; '' when not traced: the worker continues the trace from it)
local function digits(v) return #v >= 1 and #v <= 18 and string.find(v, '^%d+$') ~= nil end
local function fail(what) return redis.error_reply('ERR ingest: ' .. what) end

-- validation -------------------------------------------------------------------------------------------
local wanted = ARGV[1]
if wanted ~= 'queued' and wanted ~= 'ignored' and wanted ~= 'dead_lettered' and wanted ~= 'invalid_json'
    and wanted ~= 'invalid_event' then
  return fail('unknown wanted outcome')
end
if not (digits(ARGV[3]) and digits(ARGV[4]) and digits(ARGV[7]) and digits(ARGV[8]) and digits(ARGV[9])
    and digits(ARGV[11]) and digits(ARGV[13]) and digits(ARGV[22])) then
  return fail('a count, time or ttl argument is not a decimal integer')
end
if ARGV[3] == '0' or ARGV[7] == '0' or ARGV[8] == '0' or ARGV[9] == '0' then
  return fail('a ttl argument is zero')
end
local now = ARGV[4]
local head = redis.call('HMGET', KEYS[8], 'seq', 'hash')
local head_seq = head[1] or '0'
-- The sequence number is added to in Lua (doubles): at most 12 digits keeps it exact and free of exponents.
if not digits(head_seq) or #head_seq > 12 then return fail('audit head seq is not a decimal integer') end
local prev = head[2] or '0000000000000000000000000000000000000000'
if #prev ~= 40 or not string.find(prev, '^%x+$') then return fail('audit head hash is not a SHA-1') end
local seq = tostring(tonumber(head_seq) + 1)

local outcome = wanted
local record = wanted == 'queued' or wanted == 'ignored' or wanted == 'dead_lettered'
if record then
  local state = redis.call('HGET', KEYS[2], 'state')
  if state == 'queued' or state == 'processing' or state == 'retrying' then
    -- Still being worked on after its dedup mark expired: never run an event twice at once.
    outcome = 'duplicate'
  end
end

-- writes -----------------------------------------------------------------------------------------------
-- From here on nothing can fail: the arguments are checked, and Redis refuses a script for lack of memory
-- (or on a read-only replica) only at its first write. The dedup mark is that write, and decides too.
if outcome ~= 'duplicate' and record and not redis.call('SET', KEYS[1], now, 'NX', 'EX', ARGV[3]) then
  outcome = 'duplicate'
end
-- The audit entry before the record, so that the record can name its entry (the console shows it).
local hash = redis.sha1hex(prev .. '\n' .. seq .. '\n' .. outcome .. '\n' .. ARGV[16])
local audit_id
if outcome == 'duplicate' and ARGV[22] ~= '0' then
  -- A replayed duplicate's body is stored once, by its digest, however often it is replayed.
  redis.call('SET', KEYS[9], ARGV[15], 'NX')
  redis.call('PEXPIRE', KEYS[9], ARGV[22])
  audit_id = redis.call('XADD', KEYS[7], '*',
    'seq', seq, 'prev', prev, 'hash', hash, 'outcome', outcome, 'event_id', ARGV[2],
    'received_ms', now, 'request_id', ARGV[12], 'secret_index', ARGV[13],
    'header', ARGV[14], 'body', '', 'digest', ARGV[16], 'delivery_id', ARGV[18], 'mac', ARGV[20],
    'body_ref', ARGV[21])
else
  audit_id = redis.call('XADD', KEYS[7], '*',
    'seq', seq, 'prev', prev, 'hash', hash, 'outcome', outcome, 'event_id', ARGV[2],
    'received_ms', now, 'request_id', ARGV[12], 'secret_index', ARGV[13],
    'header', ARGV[14], 'body', ARGV[15], 'digest', ARGV[16], 'delivery_id', ARGV[18],
    'mac', outcome == 'duplicate' and ARGV[20] or ARGV[19])
end
redis.call('HSET', KEYS[8], 'seq', seq, 'hash', hash)

local stored = outcome ~= 'duplicate' and record
if stored then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2],
    'id', ARGV[2], 'type', ARGV[10], 'created', ARGV[11], 'body', ARGV[15], 'state', outcome,
    'generation', '0', 'attempts', '0', 'received_ms', now, 'updated_ms', now,
    'request_id', ARGV[12], 'secret_index', ARGV[13], 'traceparent', ARGV[23], 'audit_id', audit_id)
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

-- Console indexes (event_index.py; keys.py says what each costs): the id, type and state indexes, and when
-- the record expires. Kept to three commands: the ingest path's budget for them is 5 % (docs/BENCHMARKS.md).
if stored then
  local ix, id = KEYS[10], ARGV[2]
  redis.call('ZADD', ix .. 'ids', 0, id)
  redis.call('ZADD', ix .. 'type:' .. ARGV[10], now, id)
  redis.call('ZADD', ix .. 'state:' .. outcome, now, id)
  if outcome ~= 'queued' then
    local ttl = outcome == 'ignored' and ARGV[8] or ARGV[9]
    redis.call('ZADD', ix .. 'expiry', tonumber(now) + tonumber(ttl) * 1000, id .. ' ' .. ARGV[10])
  end
end
return outcome
