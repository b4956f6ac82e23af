-- wrk script for make bench: optional bearer token, one summary line as JSON.
local token = os.getenv("KCPEP_TOKEN")
wrk.method = "GET"
wrk.path = os.getenv("KCPEP_PATH") or "/account/1"
wrk.headers["Host"] = "bench.local"
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
