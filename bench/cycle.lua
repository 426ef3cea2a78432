-- wrk script: cycle through the pre-signed requests of bench/deliveries.py, one per request.
-- BENCH_REQUESTS names the file (each request behind its length in ten ASCII digits).
-- Run with -t1: each wrk thread would start again at the first request.
-- done() prints one line, "BENCH_JSON {...}", that bench/wrk.py reads.
local requests = {}
local count = 0
local next_index = 0

function init(args)
  local file = assert(io.open(assert(os.getenv("BENCH_REQUESTS")), "rb"))
  while true do
    local length = file:read(10)
    if not length then break end
    count = count + 1
    requests[count] = file:read(tonumber(length))
  end
  file:close()
end

function request()
  next_index = next_index % count + 1
  return requests[next_index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"answers": %d, "duration_us": %d, "non_2xx": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"p999_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
