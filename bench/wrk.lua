-- wrk script: cycle through pre-generated, uniquely-id'd, validly signed deliveries.
-- Usage: wrk -t1 ... -s bench/wrk.lua URL -- REQUESTS_FILE [LIMIT] [DONE_FILE]
-- REQUESTS_FILE: one delivery per line, "<runinfra-signature value>\t<body>" (bodies are one-line JSON).
-- LIMIT > 0: the thread stops after that many responses and DONE_FILE is written (wrk itself then
-- waits for SIGINT from the bench, which prints the summary).
-- Run with ONE thread: every thread would read the same file and send the same ids (duplicates).
local reqs = {}
local n = 0
local idx = 0
local limit = 0
local done_file = nil
wrapped = 0
responses = 0
statuses = {}

function init(args)
  local path = args[1]
  limit = tonumber(args[2] or "0") or 0
  done_file = args[3]
  for line in io.lines(path) do
    local tab = line:find("\t", 1, true)
    if tab then
      n = n + 1
      reqs[n] = wrk.format("POST", "/webhooks/runinfra",
        {["Content-Type"] = "application/json", ["runinfra-signature"] = line:sub(1, tab - 1)},
        line:sub(tab + 1))
    end
  end
end

function request()
  idx = idx + 1
  if idx > n then
    idx = 1
    wrapped = wrapped + 1
  end
  return reqs[idx]
end

function response(status, headers, body)
  responses = responses + 1
  local k = tostring(status)
  statuses[k] = (statuses[k] or 0) + 1
  if limit > 0 and responses == limit then
    if done_file then
      local f = io.open(done_file, "w")
      f:write(tostring(responses))
      f:close()
    end
    wrk.thread:stop()
  end
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local st = {}
  local wr = 0
  for _, t in ipairs(threads) do
    wr = wr + (t:get("wrapped") or 0)
    local s = t:get("statuses") or {}
    for k, v in pairs(s) do st[k] = (st[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(st) do table.insert(parts, string.format('"%s":%d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f,"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,' ..
    '"err_timeout":%d,"wrapped":%d,"statuses":{%s}}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout,
    wr, table.concat(parts, ",")))
end
