-- wrk script of bench_actors: POST /counter/<name> with an empty body, the name stepping through the workload's
-- keys in turn; at the end print one parseable result line.
--
-- Arguments (after `--` on wrk's command line): the number of keys and the name prefix. One key: every request goes
-- to /counter/<prefix>. N keys: request i goes to /counter/<prefix><i mod N>, so every key gets the same share and
-- the 32 connections' requests in flight are for different keys. The result line is post64.lua's:
-- "MMBENCH key=value ..." with requests, duration_us, the latency percentiles in microseconds and wrk's error
-- counters (errors_status counts HTTP responses >= 400); benches/_harness.py parses it.

local keys, prefix, sent = 1, "hot", 0

function init(args)
  keys = tonumber(args[1]) or 1
  prefix = args[2] or "hot"
  assert(keys >= 1, "counter.lua: the number of keys must be at least 1")
end

function request()
  local name = prefix
  if keys > 1 then
    name = prefix .. (sent % keys)
  end
  sent = sent + 1
  return wrk.format("POST", "/counter/" .. name, nil, "")
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "MMBENCH requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d " ..
    "errors_connect=%d errors_read=%d errors_write=%d errors_status=%d errors_timeout=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
