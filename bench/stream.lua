-- wrk script of the olbproxy bench (bench/load.py runs it; settings come from BENCH_* env).
--
-- Each connection posts /api/chat over and over (wrk's closed loop). Stream mode counts the
-- token lines of every completed stream and checks it ends with Ollama's "done":true line;
-- whole mode counts non-streamed answers. Only answers that complete inside the window
-- [BENCH_START, BENCH_END] (CLOCK_MONOTONIC seconds, the clock of Python's time.monotonic)
-- count, so connection ramp-up and wrk's abrupt end stay out of the figures.
--
-- The first streams of the connections ask for lengths (num_predict) spread evenly over
-- 1..BENCH_TOKENS, so completions are spread evenly over time from the first stream on:
-- tokens of the streams that complete inside the window, per second, then measure tokens
-- delivered per second (the window must start after the longest first stream).
--
-- Direct runs give each wrk thread one simulator address (BENCH_ADDRS), so the streams are
-- spread over the simulators as the proxies spread them.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local timespec = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, timespec) -- CLOCK_MONOTONIC
  return tonumber(timespec.tv_sec) + tonumber(timespec.tv_nsec) * 1e-9
end

local function env(name, default)
  local value = os.getenv(name)
  if value == nil or value == "" then return default end
  return value
end

local mode = env("BENCH_MODE", "stream")
local path = env("BENCH_PATH", "/api/chat")
local model = env("BENCH_MODEL", "gpt-oss:20b")
local tokens_per_stream = tonumber(env("BENCH_TOKENS", "200"))
local stagger = env("BENCH_STAGGER", "0") == "1"
local conns_per_thread = tonumber(env("BENCH_CONNS", "1"))
local window_start = tonumber(env("BENCH_START", "0"))
local window_end = tonumber(env("BENCH_END", "1e18"))
local auth = env("BENCH_AUTH", "")

-- Runs in the main Lua state: one address per thread, round-robin over BENCH_ADDRS.
local threads = {}
local addresses = {}
for hostport in string.gmatch(env("BENCH_ADDRS", ""), "[^,]+") do
  local host, port = string.match(hostport, "^(.*):(%d+)$")
  table.insert(addresses, wrk.lookup(host, port)[1])
end

function setup(thread)
  thread:set("thread_index", #threads)
  thread:set("thread_count", tonumber(env("BENCH_THREADS", "1")))
  if #addresses > 0 then
    thread.addr = addresses[(#threads % #addresses) + 1]
  end
  table.insert(threads, thread)
end

-- Per-thread state (each thread has its own Lua state); setup() sets the thread's index.
thread_index = 0
thread_count = 1
sent = 0
window_tokens = 0
window_answers = 0
answers = 0
bad_status = 0
truncated = 0

local headers = { ["Content-Type"] = "application/json" }
if auth ~= "" then headers["Authorization"] = "Bearer " .. auth end

local function body_for(length)
  return string.format(
    '{"model":"%s","messages":[{"role":"user","content":"hello"}],"stream":%s,'
      .. '"options":{"num_predict":%d}}',
    model, mode == "stream" and "true" or "false", length)
end

local full_request = nil

function init(args)
  full_request = wrk.format("POST", path, headers, body_for(tokens_per_stream))
end

function request()
  sent = sent + 1
  if stagger and sent <= conns_per_thread then
    -- Connection j of thread i gets phase (j + i / threads) / connections_per_thread.
    local phase = (sent - 1 + thread_index / thread_count) / conns_per_thread
    local length = math.max(1, math.ceil(phase * tokens_per_stream))
    return wrk.format("POST", path, headers, body_for(length))
  end
  return full_request
end

function response(status, _, body)
  local t = now()
  answers = answers + 1
  if status ~= 200 then
    bad_status = bad_status + 1
    return
  end
  if not string.find(body, '"done":true', math.max(1, #body - 1000), true) then
    truncated = truncated + 1 -- an {"error"} line or a cut stream: no final done chunk
    return
  end
  if t < window_start or t >= window_end then return end
  window_answers = window_answers + 1
  if mode == "stream" then
    local _, lines = string.gsub(body, "\n", "")
    window_tokens = window_tokens + lines - 1 -- every line but the final done chunk
  end
end

function done(summary, latency, requests)
  local totals = { window_tokens = 0, window_answers = 0, answers = 0, bad_status = 0,
                   truncated = 0 }
  for _, thread in ipairs(threads) do
    for name, _ in pairs(totals) do
      totals[name] = totals[name] + (thread:get(name) or 0)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"window_tokens":%d,"window_answers":%d,"answers":%d,"bad_status":%d,'
      .. '"truncated":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,'
      .. '"status_errors":%d,"timeouts":%d,"bytes":%d,"duration_us":%d}\n',
    totals.window_tokens, totals.window_answers, totals.answers, totals.bad_status,
    totals.truncated, e.connect, e.read, e.write, e.status, e.timeout, summary.bytes,
    summary.duration))
end
