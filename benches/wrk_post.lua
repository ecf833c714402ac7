-- wrk script for benches/load.sh: POSTs one JSON body to every connection,
-- then prints one machine-readable RESULT line from the done() hook.
--
-- Environment:
--   BENCH_BODY     file holding the request body (required)
--   BENCH_PATH     request path (default /v1/chat/completions)
--   BENCH_HEADERS  extra headers, "Name: value" separated by "|"
--   BENCH_AUTH     Authorization value (default none)

local path = os.getenv("BENCH_BODY")
local f = assert(io.open(path, "rb"), "cannot open BENCH_BODY " .. tostring(path))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH") or "/v1/chat/completions"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
   wrk.headers["Authorization"] = auth
end
local extra = os.getenv("BENCH_HEADERS") or ""
for pair in string.gmatch(extra, "[^|]+") do
   local k, v = string.match(pair, "^%s*([^:]+):%s*(.-)%s*$")
   if k then wrk.headers[k] = v end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "RESULT requests=%d duration_us=%d bytes=%d err_connect=%d err_read=%d " ..
      "err_write=%d err_status=%d err_timeout=%d p50_us=%d p90_us=%d p99_us=%d " ..
      "max_us=%d mean_us=%.1f\n",
      summary.requests, summary.duration, summary.bytes, e.connect, e.read,
      e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, latency.mean))
end
