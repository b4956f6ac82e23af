-- wrk script for make soak (bench/soak.py): one connection per wrk thread, so every response
-- answers the oldest request of its thread still waiting. bench/soak.py writes, per round:
--   $KCPEP_SOAK_DIR/auth.txt          one Authorization header value per line (index >= 1)
--   $KCPEP_SOAK_DIR/requests-<t>.txt  "METHOD HOST PATH AUTH" per line, AUTH 0 = no header
-- and this script walks thread t's lines in order (wrapping around), sending the line's number
-- as x-soak-seq. Each response is logged to $KCPEP_SOAK_DIR/log-<t>.txt as
--   "<seq> <status> <flag> <unix second the request was sent>"
-- flag: s = a 200 whose echoed body carries this request's x-soak-seq (it reached the upstream),
-- x = a 200 that does not, u = a 401 with a UMA challenge, d = a 302 to /denied, - otherwise.
-- Never logs a header value. KCPEP_SOAK_DELAY_MS paces each connection.
local verified = false
local dir = os.getenv("KCPEP_SOAK_DIR")
local pause = tonumber(os.getenv("KCPEP_SOAK_DELAY_MS") or "0")
local threads, count = {}, 0

function setup(thread)
  count = count + 1
  thread:set("tid", count)
  threads[count] = thread
end

function init(args)
  auths = {}
  for line in io.lines(dir .. "/auth.txt") do
    auths[#auths + 1] = line
  end
  specs = {}
  for line in io.lines(dir .. "/requests-" .. tid .. ".txt") do
    local m, h, p, a = line:match("^(%S+) (%S+) (%S+) (%d+)$")
    if m then
      specs[#specs + 1] = { m, h, p, tonumber(a) }
    end
  end
  log = io.open(dir .. "/log-" .. tid .. ".txt", "w")
  log:setvbuf("line")
  seq, head, tail, queue = 0, 1, 0, {}
end

function delay()
  return pause
end

function request()
  local s = specs[seq % #specs + 1]
  if tid == 1 and not verified then
    -- wrk calls the first thread's request() once before the run to count pipelined requests;
    -- that request is never sent
    verified = true
    return wrk.format(s[1], s[3], { ["Host"] = s[2] })
  end
  local headers = { ["Host"] = s[2], ["x-soak-seq"] = tostring(seq) }
  if s[4] > 0 then
    headers["Authorization"] = auths[s[4]]
  end
  tail = tail + 1
  queue[tail] = { seq, os.time() }
  seq = seq + 1
  return wrk.format(s[1], s[3], headers)
end

function response(status, headers, body)
  local q = queue[head]
  if q == nil then
    log:write("-1 ", status, " - ", os.time(), "\n")
    return
  end
  queue[head] = nil
  head = head + 1
  local flag = "-"
  if status == 200 then
    if body and body:find('"x-soak-seq": "' .. q[1] .. '"', 1, true) then
      flag = "s"
    else
      flag = "x"
    end
  elseif status == 401 then
    local w = headers["www-authenticate"] or headers["WWW-Authenticate"] or ""
    if w:sub(1, 4) == "UMA " then
      flag = "u"
    end
  elseif status == 302 then
    if (headers["location"] or headers["Location"]) == "/denied" then
      flag = "d"
    end
  end
  log:write(q[1], " ", status, " ", flag, " ", q[2], "\n")
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'SOAK {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
