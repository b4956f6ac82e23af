-- wrk script for make bench: one summary line as JSON. By default every request is the same GET
-- with an optional bearer token (KCPEP_TOKEN). With KCPEP_TOKENS_FILE (a token per line) and
-- KCPEP_REQUESTS_FILE ("METHOD /path" per line) each request draws a user and a request with
-- Zipf-like popularity (weight 1/rank); with KCPEP_SEQUENTIAL=1 it walks every (request, user)
-- pair in order instead, once each per pass.
local token = os.getenv("KCPEP_TOKEN")
wrk.method = "GET"
wrk.path = os.getenv("KCPEP_PATH") or "/account/1"
wrk.headers["Host"] = "bench.local"
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

-- Case 8 of make bench: KCPEP_PROOFS_FILE has a DPoP proof per line; this run sends slice K of N
-- (KCPEP_PROOFS_SLICE "K/N"), one proof per request, the token with the DPoP scheme. A proof is
-- sent once: a machine fast enough to use up its slice ends the run early (the rate is over the
-- time it ran), rather than replaying proofs the filter rightly refuses.
local proofs_file = os.getenv("KCPEP_PROOFS_FILE")
if proofs_file and proofs_file ~= "" then
  local all = {}
  for line in io.lines(proofs_file) do
    if line ~= "" then all[#all + 1] = line end
  end
  local k, n = (os.getenv("KCPEP_PROOFS_SLICE") or "0/1"):match("^(%d+)/(%d+)$")
  k, n = tonumber(k), tonumber(n)
  local per = math.floor(#all / n)
  local first, i = k * per, 0
  request = function()
    local proof = all[first + (i % per) + 1]
    i = i + 1
    return wrk.format("GET", wrk.path, {
      ["Host"] = "bench.local", ["Authorization"] = "DPoP " .. token, ["DPoP"] = proof })
  end
  -- stop with more proofs left than requests in flight (one per connection), noting how long
  -- the thread sent (wrk's own duration is the -d it was given, stopped early or not)
  local ffi = require("ffi")
  ffi.cdef("typedef struct { long s; long ns; } kcpep_ts; int clock_gettime(int, kcpep_ts *);")
  local function now_us()
    local t = ffi.new("kcpep_ts")
    ffi.C.clock_gettime(1, t) -- CLOCK_MONOTONIC
    return tonumber(t.s) * 1e6 + tonumber(t.ns) / 1e3
  end
  local started = nil
  local send = request
  request = function()
    started = started or now_us()
    return send()
  end
  response = function()
    if i >= per - 256 and not ran_us then
      ran_us = math.floor(now_us() - started)
      wrk.thread:stop()
    end
  end
end

-- the threads (in the main script's state), to read a thread's ran_us in done
local threads = {}
setup = function(thread)
  threads[#threads + 1] = thread
end

local tokens_file, requests_file = os.getenv("KCPEP_TOKENS_FILE"), os.getenv("KCPEP_REQUESTS_FILE")
if tokens_file and requests_file then
  local tokens, reqs = {}, {}
  for line in io.lines(tokens_file) do
    if line ~= "" then tokens[#tokens + 1] = line end
  end
  for line in io.lines(requests_file) do
    local m, p = line:match("^(%S+) (%S+)$")
    if m then reqs[#reqs + 1] = { m, p } end
  end
  -- cumulative 1/rank weights, normalised
  local function cdf(n)
    local c, sum = {}, 0
    for i = 1, n do sum = sum + 1 / i; c[i] = sum end
    for i = 1, n do c[i] = c[i] / sum end
    return c
  end
  local function draw(c)
    local r, lo, hi = math.random(), 1, #c
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if c[mid] < r then lo = mid + 1 else hi = mid end
    end
    return lo
  end
  local user_cdf, request_cdf = cdf(#tokens), cdf(#reqs)
  local sequential, n = os.getenv("KCPEP_SEQUENTIAL") == "1", 0
  math.randomseed(os.time())
  request = function()
    local u, q
    if sequential then
      u, q = n % #tokens + 1, math.floor(n / #tokens) % #reqs + 1
      n = n + 1
    else
      u, q = draw(user_cdf), draw(request_cdf)
    end
    return wrk.format(reqs[q][1], reqs[q][2],
      { ["Host"] = "bench.local", ["Authorization"] = "Bearer " .. tokens[u] })
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  -- a run that stopped early ran for as long as its threads sent
  local duration = summary.duration
  for _, t in ipairs(threads) do
    local ran = t:get("ran_us")
    if ran then duration = math.min(duration, ran) end
  end
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
